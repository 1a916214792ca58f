"""Event feeds through the production web server: gunicorn with gevent workers started from
the Procfile's `web` line, a real worker streaming a chat answer, read with a real HTTP client."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from aiintegration.embedded import free_port
from tests.conftest import TOKEN
from tests.support import Web, Worker, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def web(ctx, db):
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 600}))
    with Worker(db, concurrency=4), Web(db, free_port()) as server:
        yield f"http://127.0.0.1:{server.port}"


def new_session(web: str) -> str:
    reply = httpx.post(f"{web}/v1/chat/sessions", headers=AUTH,
                       json={"user_id": "u-g", "item_id": "i-g", "initial_context": "gunicorn"})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def test_a_streamed_answer_arrives_in_order_through_gunicorn(web):
    sid = new_session(web)
    events = []
    with httpx.stream("GET", f"{web}/v1/chat/sessions/{sid}/events", headers=AUTH, timeout=20) as feed:
        assert feed.status_code == 200 and feed.headers["content-type"].startswith("text/event-stream")
        sent = httpx.post(f"{web}/v1/chat/sessions/{sid}/messages", headers=AUTH, json={"message": "stream it"})
        assert sent.status_code == 202
        kind = None
        for line in feed.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind and kind.startswith("chat.response"):
                events.append((kind, json.loads(line[6:])))
                if kind == "chat.response.completed":
                    break
    deltas = [data for kind, data in events if kind == "chat.response.delta"]
    assert len(deltas) > 1 and [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == events[-1][1]["text"]


def test_feeds_whose_clients_hang_up_let_go_of_redis_within_a_read_block(web, ctx):
    sid = new_session(web)

    def reading() -> int:  # connections blocked in a feed's XREAD
        return sum(1 for c in ctx.tasks.r.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))

    before = reading()
    clients = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", int(web.rsplit(":", 1)[1])))
        sock.sendall(f"GET /v1/chat/sessions/{sid}/events HTTP/1.1\r\nHost: t\r\n"
                     f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        clients.append(sock)
    wait_for(lambda: reading() >= before + 3, timeout_s=10, what="three feeds reading")
    for sock in clients:
        sock.close()
    wait_for(lambda: reading() <= before, timeout_s=4, interval_s=0.1,
             what="the feeds to notice their clients left (heartbeat is 15 s)")
