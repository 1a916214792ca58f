"""One worker process holds hundreds of provider calls at once through the real async SDK
(issue 18, item 1): each call is a coroutine on the process's event loop, so neither a pool of
helper threads nor a thread per call limits them — the worker's OS threads stay its Celery
pool plus a few, however many calls are in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiintegration.commands.create import create_generation_task
from aiintegration.domain.auth import Caller, Role
from aiintegration.domain.providers import ProviderConfig
from tests.fake_provider import Behaviour, FakeProvider
from tests.support import Worker, wait_for, wait_status

CALLS = 300
CALL_S = 4.0


@pytest.fixture(scope="module")
def fake(ctx):
    with FakeProvider() as server:
        server.default = Behaviour(delay_s=CALL_S, words=3)
        ctx.providers.put(ProviderConfig("wide", "openai_compatible", api_key="sk-wide", base_url=server.base_url,
                                         timeout_s=60))
        yield server


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_one_worker_process_holds_hundreds_of_sdk_calls_at_once_without_a_thread_per_call(ctx, db, fake):
    caller = Caller("default", Role.CLIENT)
    ids = [create_generation_task(ctx, caller=caller, task_type="text_generation",
                                  request_content={"prompt": f"wide {i}", "max_tokens": 5}, requested_by="wide",
                                  options={"provider": "wide"})[0] for i in range(CALLS)]
    with Worker(db, concurrency=CALLS) as worker:
        assert worker.proc is not None
        fake.reset_peak()
        wait_for(lambda: fake.in_flight >= CALLS * 0.9, timeout_s=30)  # 9 in 10 calls open at once
        busy_threads = threads_of(worker.proc.pid)
        records = [wait_status(ctx, task_id, ["succeeded"], timeout_s=60) for task_id in ids]
    assert fake.peak_in_flight >= CALLS * 0.9
    # Celery's pool threads (one per message taken) and a few of its own, the event loop and the
    # watchdog: at -c 200 and -c 1000 the bench counts 204 and 1,004. A thread per call would
    # add ~CALLS more.
    assert busy_threads <= CALLS + 20, busy_threads
    assert all(r.attempts == 1 and r.provider == "wide" for r in records)
