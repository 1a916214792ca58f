"""1,000 tasks in flight while the worker holding them is SIGKILLed twice: every task ends in
exactly one terminal state, none is lost, and none finishes (writes its result) twice.

Two recovery paths are exercised, as in production: messages a killed worker had taken are
in kombu's `unacked` hash and come back after the visibility timeout; a message lost in the
window between the worker's BRPOP and its unacked write (kombu has one) is re-published by
beat's pending sweep, which compares queued records with what the broker holds."""

from __future__ import annotations

import os
import time

import pytest

from aiintegration.commands.create import create_generation_task
from tests.reliability.conftest import CRASH_ENV, event_counts, summary, terminal_count, wait_all_terminal
from tests.support import Beat, Worker, wait_for

SWEEP_ENV = {**CRASH_ENV, "AII_PENDING_INTERVAL_S": "1", "AII_PENDING_GRACE_S": "3"}
N = int(os.environ.get("AII_RELIABILITY_TASKS", "1000"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_two_sigkills_lose_nothing_and_finish_nothing_twice(ctx, db):
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 30}))
    ids = [create_generation_task(ctx, task_type="text_generation", request_content={"prompt": f"kill test {i}"},
                                  requested_by="reliability")[0] for i in range(N)]
    beat = Beat(db, env=SWEEP_ENV, name="beat").start()
    workers: list[Worker] = []
    kill_points = iter((N // 4, N * 3 // 5))
    try:
        for round_no in range(3):
            worker = Worker(db, concurrency=16, env=SWEEP_ENV, name=f"round{round_no}").start()
            workers.append(worker)
            point = next(kill_points, None)
            if point is None:
                break
            # Kill while the worker holds running tasks, past the given number of finished ones.
            wait_for(lambda p=point: terminal_count(ctx) >= p and ctx.tasks.count("running") > 0,
                     timeout_s=120, interval_s=0.01, what=f"{point} finished tasks and some running")
            held = ctx.tasks.count("running")
            taken = ctx.broker.unacked_process_task_ids()  # what the pending sweep sees as "the broker has it"
            worker.kill()
            assert held > 0 and taken and taken <= set(ids), taken
        wait_all_terminal(ctx, N, timeout_s=240)
        time.sleep(1.0)  # any late duplicate delivery would show up as a second finish
    finally:
        for proc in (*workers, beat):
            proc.kill()

    records = ctx.tasks.get_many(ids)
    assert summary(records) == {"succeeded": N}, summary(records)
    counts = event_counts(ctx, ids)
    assert all(c["task.succeeded"] == 1 for c in counts), [c for c in counts if c["task.succeeded"] != 1][:3]
    assert all(c["task.created"] == 1 for c in counts)
    # Work the killed workers held was taken over: started again, on a later attempt.
    recovered = [r for r in records if r.attempts > 1]
    assert recovered, "no task was running when the workers were killed"
    assert all(c["task.started"] == r.attempts for c, r in zip(counts, records, strict=True))
    assert max(r.attempts for r in records) <= 3
    assert all(r.result for r in records)
    # The cluster-wide finished counter (bumped inside the completing Lua script) saw each once.
    metrics = ctx.tasks.r.hgetall(f"{ctx.settings.key_prefix}:metrics")
    finished = sum(int(v) for k, v in metrics.items() if k.startswith("aii_tasks_finished_total|"))
    assert finished == N, {k: v for k, v in metrics.items() if "finished" in k}
