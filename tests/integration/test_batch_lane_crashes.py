"""The batch lane survives a worker SIGKILLed at its two dangerous points: after the provider
created a batch but before we recorded it, and halfway through applying a batch's results
(how each provider's batch is found again is in test_batch_adapters.py).
The kill lands exactly there: `AII_BATCH_CRASH_AT=<step>` makes the worker SIGKILL itself at
that step. Afterwards every task is in exactly one terminal state and the fake provider saw
each task in exactly one successful batch (nothing submitted, nor billed, twice)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fake_provider import BatchBehaviour, FakeProvider
from tests.support import Beat, Worker, events_of, wait_for

OPENAI_KEY = "sk-LEAKCHECK-crash-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-LEAKCHECK-crash-0123456789"
LANE_ENV = {"AII_BATCH_INTERVAL_S": "0.3", "AII_BATCH_MAX_WAIT_S": "0.5", "AII_BATCH_MAX_REQUESTS": "100"}
TERMINAL = ("task.succeeded", "task.dead_lettered", "task.cancelled")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake(ctx, db):
    with FakeProvider(seed=17) as server:
        for config in server.configs(openai_key=OPENAI_KEY, anthropic_key=ANTHROPIC_KEY):
            ctx.providers.put(config)
        ctx.providers.set_order(["local", "openai", "anthropic"])
        server.batch = BatchBehaviour(delay_s=0.4)
        with Beat(db, env=LANE_ENV, name="beat"):
            yield server


def submit_both(client, auth, n, label):
    ids = []
    for i in range(n):
        body = {"task_type": "text_generation", "request_content": {"prompt": f"{label} {i}"}, "requested_by": "crash",
                "options": {"provider": "openai" if i % 2 else "anthropic", "batch": True}}
        resp = client.post("/v1/tasks", json=body, headers=auth)
        assert resp.status_code == 202, resp.json
        ids.append(resp.json["id"])
    return ids


def crash_at(db, step, name):
    """A worker that SIGKILLs itself at `step`; returns once it is dead."""
    worker = Worker(db, concurrency=4, env={**LANE_ENV, "AII_BATCH_CRASH_AT": step}, name=name).start()
    try:
        wait_for(lambda: worker.proc.poll() is not None, timeout_s=20, what=f"the {name} worker to die at {step}")
    finally:
        worker.kill()
    assert f"AII_BATCH_CRASH_AT={step}" in worker.output()
    return worker


def batches_of(fake, ids):
    return [b for b in fake.batch_records if set(b.custom_ids) & set(ids)]


def exactly_once(ctx, fake, ids):
    records = ctx.tasks.get_many(ids)
    assert Counter(r.status for r in records) == {"succeeded": len(ids)}
    for task_id in ids:
        ends = [k for k in (e["type"] for e in events_of(ctx, task_id)) if k in TERMINAL]
        assert ends == ["task.succeeded"], (task_id, ends)
    assert {t: fake.batch_successes()[t] for t in ids} == {t: 1 for t in ids}
    return records


def test_workers_killed_after_creating_a_batch_and_while_applying_it_submit_and_finish_nothing_twice(
        client, auth, ctx, db, fake):
    ids = submit_both(client, auth, 20, "crash")
    crash_at(db, "created", "doomed1")  # the first group's batch exists at the provider, not on our record
    assert len(batches_of(fake, ids)) == 1
    # The next worker adopts it (Anthropic keeps no metadata: the one batch created since the
    # intent that is not ours yet, with as many requests), submits the other group, and dies
    # halfway through applying the first batch that ended.
    second = crash_at(db, "applying", "doomed2")
    assert "adopted" in second.output() and len(batches_of(fake, ids)) == 2
    halfway = Counter(r.status for r in ctx.tasks.get_many(ids))
    assert halfway["succeeded"] > 0 and halfway["running"] > 0, halfway
    with Worker(db, concurrency=4, env=LANE_ENV, name="rescuer"):
        wait_for(lambda: all(r.status == "succeeded" for r in ctx.tasks.get_many(ids)), timeout_s=30, interval_s=0.1,
                 what="every task succeeded")
    exactly_once(ctx, fake, ids)
    made = batches_of(fake, ids)
    assert len(made) == 2 and {b.provider for b in made} == {"openai", "anthropic"}
    listed = {b["id"]: b for b in client.get("/v1/batches", headers=auth).json["items"]}
    assert [listed[b.id]["status"] for b in made] == ["ended", "ended"]
    assert sum(listed[b.id]["counts"]["succeeded"] for b in made) == len(ids)
