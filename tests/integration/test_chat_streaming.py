"""A chat over REST with the answer streamed as SSE, read by a real HTTP client from a real
server; resume with Last-Event-ID; closing cancels the answer in flight."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from werkzeug.serving import make_server

from tests.conftest import TOKEN
from tests.support import Worker, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(app, ctx, db):
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 800}))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with Worker(db, concurrency=4):
        yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def read_sse(base, path, *, until, last_event_id=None, timeout=20.0):
    headers = {**AUTH, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    events = []
    with httpx.stream("GET", base + path, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        current = {}
        for line in resp.iter_lines():
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "event" in current:
                events.append(current)
                if until(current):
                    break
                current = {}
    return events


def test_a_chat_answer_streams_in_order_before_its_completion(server):
    start = httpx.post(f"{server}/v1/chat/sessions", headers=AUTH, json={
        "user_id": "u-1", "item_id": "sku-42", "initial_context": {"item": "blue kettle", "price": 39}})
    assert start.status_code == 201
    sid = start.json()["id"]
    sent = httpx.post(f"{server}/v1/chat/sessions/{sid}/messages", headers=AUTH, json={"message": "Is it steel?"})
    assert sent.status_code == 202
    message_id = sent.json()["message_id"]
    events = read_sse(server, f"/v1/chat/sessions/{sid}/events",
                      until=lambda e: e["event"] == "chat.response.completed")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "chat.session_started" and kinds[-1] == "chat.response.completed"
    deltas = [e["data"] for e in events if e["event"] == "chat.response.delta"]
    assert len(deltas) >= 3
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(d["message_id"] == message_id for d in deltas)
    assert "".join(d["text"] for d in deltas) == events[-1]["data"]["text"]
    # Resume from the middle: exactly the rest, nothing twice.
    middle = events[len(events) // 2]
    rest = read_sse(server, f"/v1/chat/sessions/{sid}/events", last_event_id=middle["id"],
                    until=lambda e: e["event"] == "chat.response.completed")
    assert [e["id"] for e in rest] == [e["id"] for e in events[len(events) // 2 + 1:]]
    session = httpx.get(f"{server}/v1/chat/sessions/{sid}", headers=AUTH).json()
    assert [m["role"] for m in session["history"]] == ["user", "assistant"]
    assert session["stats"]["messages"] == 2 and session["stats"]["tokens_out"] > 0


def test_closing_a_session_cancels_its_answer_and_rejects_new_messages(server, ctx):
    sid = httpx.post(f"{server}/v1/chat/sessions", headers=AUTH, json={
        "user_id": "u-2", "item_id": "sku-7", "initial_context": "a red lamp"}).json()["id"]
    task_id = httpx.post(f"{server}/v1/chat/sessions/{sid}/messages", headers=AUTH,
                         json={"message": "tell me everything"}).json()["task_id"]
    wait_for(lambda: ctx.tasks.get(task_id).status == "running", what="the answer to start")
    closed = httpx.post(f"{server}/v1/chat/sessions/{sid}/close", headers=AUTH, json={"close_reason": "done"})
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert ctx.tasks.get(task_id).status == "cancelled"
    events = read_sse(server, f"/v1/chat/sessions/{sid}/events", until=lambda e: e["event"] == "chat.session_closed")
    assert events[-1]["event"] == "chat.session_closed"
    again = httpx.post(f"{server}/v1/chat/sessions/{sid}/messages", headers=AUTH, json={"message": "hello?"})
    assert again.status_code == 409
    assert httpx.post(f"{server}/v1/chat/sessions/{sid}/messages", headers=AUTH,
                      json={"message": ""}).status_code in (409, 422)
    unknown = httpx.post(f"{server}/v1/chat/sessions/00000000-0000-4000-8000-000000000000/messages", headers=AUTH,
                         json={"message": "hi"})
    assert unknown.status_code == 404


def test_a_task_feed_ends_after_its_terminal_event_and_rejects_bad_resume_ids(server, client):
    task_id = httpx.post(f"{server}/v1/tasks", headers=AUTH, json={
        "task_type": "text_generation", "request_content": {"prompt": "feed"}, "requested_by": "sse"}).json()["id"]
    events = read_sse(server, f"/v1/tasks/{task_id}/events", until=lambda e: False)
    assert [e["event"] for e in events] == ["task.created", "task.started", "task.succeeded"]
    assert events[0]["data"]["task_id"] == task_id and events[0]["data"]["at"].endswith("Z")
    bad = httpx.get(f"{server}/v1/tasks/{task_id}/events", headers={**AUTH, "Last-Event-ID": "nonsense"})
    assert bad.status_code == 400
    assert httpx.get(f"{server}/v1/tasks/{task_id}/events").status_code == 401


def test_a_late_delta_from_a_stopped_call_never_follows_the_incomplete_event(ctx):
    """The stopped call's thread may still hand over a chunk after the task thread wrote
    `chat.response.incomplete`: it is dropped, so the attempt's events end with the notice."""
    from aiintegration.commands.chat import ChatStream, start_chat_session
    from aiintegration.domain.records import TaskRecord
    from aiintegration.domain.states import TaskStatus

    sid = start_chat_session(ctx, "u-late", "i-late", "ctx")["id"]
    pool = ctx.tasks.r.connection_pool

    def in_use() -> int:  # BlockingConnectionPool: every connection made, minus the idle ones
        return len(pool._connections) - sum(1 for c in list(pool.pool.queue) if c is not None)

    idle_before = in_use()
    stream = ChatStream(ctx, TaskRecord(id="task-late", task_type="chat_completion", status=TaskStatus.RUNNING,
                                        requested_by="test", request_content={}, attempts=1,
                                        chat_session_id=sid, chat_message_id="m-late"))
    stream.delta("one")
    stream.delta("two")
    assert in_use() == idle_before + 1  # the answer's deltas go through its one connection
    stream.incomplete("cancelled")
    assert in_use() == idle_before  # given back at the end
    stream.delta("three")  # too late
    stream.close()  # the task's finally: harmless after the end
    rows = ctx.tasks.r.xrange(ctx.chats.keys.chat_stream(sid))
    assert [fields["type"] for _, fields in rows] == [
        "chat.session_started", "chat.response.delta", "chat.response.delta", "chat.response.incomplete"]
    assert [json.loads(fields["data"]).get("seq") for _, fields in rows[1:3]] == [1, 2]
