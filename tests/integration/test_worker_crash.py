"""A worker SIGKILLed while it holds a task: the message comes back, the task finishes once."""

from __future__ import annotations

import pytest

from tests.support import Worker, events_of, wait_status

# Short visibility timeout and restore sweep so redelivery happens in seconds, not an hour.
CRASH_ENV = {"AII_LEASE_S": "2", "AII_VISIBILITY_TIMEOUT_S": "4", "AII_UNACKED_RESTORE_INTERVAL_S": "1",
             "AII_UNACKED_RESTORE_THROTTLE": "1"}


@pytest.mark.slow
def test_a_killed_workers_task_is_redelivered_and_finishes_exactly_once(client, auth, ctx, db):
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 3000}))
    task_id = client.post("/v1/tasks", json={"task_type": "text_generation", "request_content": {"prompt": "slow"},
                                             "requested_by": "crash-test"}, headers=auth).json["id"]
    first = Worker(db, concurrency=1, env=CRASH_ENV, name="doomed").start()
    try:
        running = wait_status(ctx, task_id, ["running"], timeout_s=15)
        first.kill()
    finally:
        first.kill()
    assert running.attempts == 1
    with Worker(db, concurrency=2, env=CRASH_ENV, name="rescuer") as second:
        record = wait_status(ctx, task_id, ["succeeded"], timeout_s=40)
        kinds = [e["type"] for e in events_of(ctx, task_id)]
        assert "rescuer" in record.worker_id, second.output()[-2000:]
    assert record.attempts == 2
    assert kinds.count("task.succeeded") == 1
    started = [e for e in events_of(ctx, task_id) if e["type"] == "task.started"]
    assert [e["recovered"] for e in started] == [False, True]
