"""Queued work: a cancelled task never reaches a provider; higher priority is served first."""

from __future__ import annotations

from aiintegration.store.broker_queue import broker_lists
from tests.support import Worker, events_of, wait_for, wait_status


def submit(client, auth, **overrides):
    body = {"task_type": "text_generation", "request_content": {"prompt": "p"}, "requested_by": "svc", **overrides}
    resp = client.post("/v1/tasks", json=body, headers=auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def test_a_cancelled_queued_task_is_never_run_and_cancelling_twice_is_409(client, auth, ctx, db):
    doomed = submit(client, auth)
    kept = submit(client, auth)
    resp = client.post(f"/v1/tasks/{doomed}/cancel", json={"cancellation_reason": "user left"}, headers=auth)
    assert resp.status_code == 202 and resp.json["status"] == "cancelled"
    with Worker(db, concurrency=2):  # the broker still holds the cancelled task's message
        wait_status(ctx, kept, ["succeeded"])
        wait_for(lambda: sum(ctx.tasks.r.llen(q) for q in broker_lists()) == 0, what="queue drained")
    record = ctx.tasks.get(doomed)
    assert record.status == "cancelled" and record.attempts == 0 and record.result is None
    assert [e["type"] for e in events_of(ctx, doomed)] == ["task.created", "task.cancelled"]
    again = client.post(f"/v1/tasks/{doomed}/cancel", json={"cancellation_reason": "again"}, headers=auth)
    assert again.status_code == 409 and again.json["error"]["details"]["status"] == "cancelled"
    done = client.post(f"/v1/tasks/{kept}/cancel", json={"cancellation_reason": "late"}, headers=auth)
    assert done.status_code == 409 and done.json["error"]["details"]["status"] == "succeeded"


def test_an_urgent_task_submitted_last_starts_before_a_busy_workers_backlog(client, auth, ctx, db):
    env = {"AII_LOCAL_LATENCY_MS": "150"}
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 150}))
    backlog = [submit(client, auth, priority=1) for _ in range(10)]
    urgent = submit(client, auth, priority=9)
    with Worker(db, concurrency=1, env=env):
        wait_status(ctx, urgent, ["succeeded"], timeout_s=20)
        records = [wait_status(ctx, t, ["succeeded"], timeout_s=20) for t in backlog]
    urgent_started = ctx.tasks.get(urgent).started_at
    started_after = sum(1 for r in records if r.started_at > urgent_started)
    # One backlog task may already be running or fetched when the worker starts.
    assert started_after >= len(backlog) - 2, (started_after, urgent_started)
