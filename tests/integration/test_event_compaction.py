"""A finished task's event stream folded into its record by the cleanup sweep: its feed
serves the same events (and resumes the same way) from wherever they are kept."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from aiintegration.commands.sweeps import cleanup_timed_out_tasks
from tests.support import Worker, wait_status


@pytest.fixture(scope="module", autouse=True)
def worker(db):
    with Worker(db, concurrency=4) as w:
        yield w


def finished_task(client, auth, ctx) -> str:
    resp = client.post("/v1/tasks", headers=auth, json={
        "task_type": "text_generation", "request_content": {"prompt": "compact me"}, "requested_by": "compaction"})
    wait_status(ctx, resp.json["id"], ["succeeded"])
    return resp.json["id"]


def feed(client, auth, task_id: str, last: str | None = None, timeout_s: float = 5,
         path: str | None = None) -> list[tuple[str, str, str]]:
    """(id, event, data) of the task's SSE feed; fails if the feed does not end by itself."""
    headers = {**auth, **({"Last-Event-ID": last} if last else {})}
    out: dict[str, bytes] = {}

    def read() -> None:
        out["body"] = client.get(path or f"/v1/tasks/{task_id}/events", headers=headers).get_data()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert "body" in out, f"the feed {path or task_id} did not end within {timeout_s}s"
    events = []
    for block in out["body"].decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "id" in fields:
            events.append((fields["id"], fields["event"], fields["data"]))
    return events


def test_a_compacted_task_serves_the_same_feed_and_resumes_the_same_way(client, auth, ctx):
    task_id = finished_task(client, auth, ctx)
    before = feed(client, auth, task_id)
    assert [e for _, e, _ in before] == ["task.created", "task.started", "task.succeeded"]
    r = ctx.tasks.r
    stream_bytes = r.memory_usage(ctx.tasks.keys.task_stream(task_id), samples=0)
    record_before = client.get(f"/v1/tasks/{task_id}", headers=auth).json

    kept_until = float(r.hget(ctx.tasks.keys.task(task_id), "expires_at"))
    assert kept_until == pytest.approx(time.time() + ctx.settings.retention_s, abs=30)
    (member, first_visit), = upkeep_entries(ctx, task_id)
    assert first_visit == pytest.approx(time.time() + ctx.settings.events_compact_after_s, abs=30)
    sweep_at = first_visit + 1
    assert ctx.tasks.upkeep(now=sweep_at)["folded"] >= 1
    assert not r.exists(ctx.tasks.keys.task_stream(task_id))
    assert r.hexists(ctx.tasks.keys.task(task_id), "events")
    assert upkeep_entries(ctx, task_id) == [(member, kept_until)]  # next visit: when its retention ends
    assert r.ttl(ctx.tasks.keys.task(task_id)) == -1  # no Redis TTL: that visit deletes it
    assert ctx.tasks.upkeep(now=sweep_at)["folded"] == 0  # nothing left to fold
    assert feed(client, auth, task_id) == before
    assert feed(client, auth, task_id, last=before[0][0]) == before[1:]
    assert feed(client, auth, task_id, last=before[-1][0]) == []
    assert client.get(f"/v1/tasks/{task_id}", headers=auth).json == record_before  # the public record as it was
    listed = client.get("/v1/tasks?requested_by=compaction&limit=200", headers=auth).json["items"]
    assert record_before in listed
    # What it saves: the whole stream, for a few hundred bytes in the hash.
    assert stream_bytes > 1000


def upkeep_entries(ctx, task_id: str) -> list[tuple[str, float]]:
    return [(m, s) for m, s in ctx.tasks.r.zrange(ctx.tasks.keys.index("upkeep"), 0, -1, withscores=True)
            if m.startswith(f"{task_id}|")]


def test_a_feed_resumed_past_a_finished_tasks_last_event_ends_at_once(client, auth, ctx):
    task_id = finished_task(client, auth, ctx)
    events = feed(client, auth, task_id)
    started = time.monotonic()
    assert feed(client, auth, task_id, last=events[-1][0]) == []
    assert time.monotonic() - started < 1.5  # no blocked wait first
    assert feed(client, auth, task_id, last=events[1][0]) == events[2:]


def test_the_cleanup_sweep_compacts_only_tasks_finished_long_enough_ago(client, auth, ctx):
    task_id = finished_task(client, auth, ctx)
    stream = ctx.tasks.keys.task_stream(task_id)
    cleanup_timed_out_tasks(ctx)
    assert ctx.tasks.r.exists(stream), "a task that just finished may still have live feeds"
    later = dataclasses.replace(ctx, clock=lambda: time.time() + ctx.settings.events_compact_after_s + 1)
    result = cleanup_timed_out_tasks(later)
    assert result["compacted"] >= 1
    assert not ctx.tasks.r.exists(stream) and ctx.tasks.r.hexists(ctx.tasks.keys.task(task_id), "events")


def test_a_dead_lettered_task_is_never_compacted(ctx):
    from aiintegration.domain.submission import validate_submission

    sub = validate_submission(task_type="text_generation", request_content={"prompt": "x"}, requested_by="svc",
                              default_timeout_s=300, max_timeout_s=3600, default_max_retries=3)
    task_id, _, _ = ctx.tasks.create(sub)
    done, _ = ctx.tasks.transition(task_id, to="dead_lettered", allowed_from=["queued"],
                                   events=[("task.dead_lettered", {"reason": "test"})])
    assert done
    ctx.tasks.r.zadd(f"{ctx.settings.key_prefix}:idx:compact", {task_id: 0})  # as if an earlier version listed it
    assert ctx.tasks.compact_listed(before=time.time() + 1) == 0
    assert ctx.tasks.start_retention(task_id, ttl_s=3600)  # a discarded DLQ entry: kept, then deleted
    assert ctx.tasks.upkeep(now=time.time() + 1800)["folded"] == 0
    assert ctx.tasks.r.exists(ctx.tasks.keys.task_stream(task_id))  # a replay from the DLQ appends to it


def test_a_closed_chat_sessions_feed_replays_and_ends_at_once(client, auth):
    sid = client.post("/v1/chat/sessions", headers=auth, json={"user_id": "u-1", "item_id": "i-1", "initial_context": "a mug"}).json["id"]
    assert client.post(f"/v1/chat/sessions/{sid}/close", headers=auth, json={"close_reason": "done"}).status_code == 200
    path = f"/v1/chat/sessions/{sid}/events"
    events = feed(client, auth, "", path=path)
    assert [e for _, e, _ in events] == ["chat.session_started", "chat.session_closed"]
    assert feed(client, auth, "", path=path, last=events[0][0]) == events[1:]
    assert feed(client, auth, "", path=path, last=events[-1][0]) == []
