"""The SSE feed's own read path: one connection per feed for all its XREADs, the raw reply
of either protocol, and a dropped Redis connection that the feed rides over."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from aiintegration.store.streams import read_after
from tests.conftest import TOKEN
from tests.support import redis_url

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_raw_xread_reply_of_either_protocol_becomes_rows(db, protocol):
    client = redis.Redis.from_url(redis_url(db), decode_responses=True, protocol=protocol)
    key = f"feed-proto-{protocol}"
    first = client.xadd(key, {"type": "a.b", "data": '{"n": 1}'})
    second = client.xadd(key, {"type": "c.d", "data": '{"n": 2}', "extra": ""})
    conn = client.connection_pool.get_connection()
    try:
        assert read_after(conn, key, "0-0", 100) == [(first, {"type": "a.b", "data": '{"n": 1}'}),
                                                 (second, {"type": "c.d", "data": '{"n": 2}', "extra": ""})]
        started = time.monotonic()
        assert read_after(conn, key, second, 100) == []  # the block ran out
        assert time.monotonic() - started >= 0.09
    finally:
        client.connection_pool.release(conn)
        client.close()


def _open_session(client):
    reply = client.post("/v1/chat/sessions", headers=AUTH, json={"user_id": "u", "item_id": "i",
                                                                  "initial_context": "feed"})
    assert reply.status_code == 201
    return reply.get_json()["id"]


def test_a_feed_reads_on_one_connection_and_gives_it_back(client, ctx):
    """However many events it serves, a feed holds one connection, returned when it ends."""

    sid = _open_session(client)
    for n in range(5):
        ctx.chats.emit(sid, "chat.message", n=n)
    pool = ctx.tasks.r.connection_pool

    def in_use() -> int:  # BlockingConnectionPool: every connection made, minus the idle ones
        return len(pool._connections) - sum(1 for c in list(pool.pool.queue) if c is not None)

    idle_before = in_use()
    reply = client.get(f"/v1/chat/sessions/{sid}/events", headers=AUTH, buffered=False)
    body = reply.response
    assert next(body) == b"retry: 2000\n\n"
    assert next(body).count(b"event: ") == 6  # every stored event in one write
    assert in_use() == idle_before + 1
    closer = threading.Timer(0.3, lambda: ctx.chats.close(sid, "done", {}))
    closer.start()
    rest = b"".join(body)  # the feed blocks on its connection until the close event, then ends
    closer.join()
    assert b"event: chat.session_closed" in rest
    reply.close()
    assert in_use() == idle_before


def test_a_feed_rides_over_a_dropped_redis_connection(client, ctx):

    sid = _open_session(client)
    reply = client.get(f"/v1/chat/sessions/{sid}/events", headers=AUTH, buffered=False)
    body = reply.response
    assert next(body) == b"retry: 2000\n\n" and b"chat.session_started" in next(body)

    def kill_the_feeds_reader_then_emit():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            readers = [c for c in ctx.tasks.r.client_list() if c.get("cmd") == "xread"]
            if readers:
                for c in readers:
                    ctx.tasks.r.client_kill_filter(_id=c["id"])
                break
            time.sleep(0.02)
        time.sleep(0.2)
        ctx.chats.emit(sid, "chat.message", after="the drop")

    killer = threading.Thread(target=kill_the_feeds_reader_then_emit)
    killer.start()
    started = time.monotonic()
    chunk = next(body)  # blocks in the feed's XREAD until the drop, then the next event
    killer.join()
    assert b"event: chat.message" in chunk and b"the drop" in chunk and time.monotonic() - started < 4
    reply.close()


def test_an_idle_feed_ends_soon_after_its_client_hangs_up(client, ctx):
    """Under gunicorn the feed sees the client's socket: a client that closed it is noticed
    at the end of the current read block, not at the next heartbeat (15 s)."""
    import socket

    sid = _open_session(client)
    ours, theirs = socket.socketpair()
    reply = client.get(f"/v1/chat/sessions/{sid}/events", headers=AUTH, buffered=False,
                       environ_overrides={"gunicorn.socket": ours})
    body = reply.response
    assert next(body) == b"retry: 2000\n\n" and b"chat.session_started" in next(body)

    theirs.close()
    backstop = threading.Timer(6, lambda: ctx.chats.close(sid, "test backstop", {}))  # never hang
    backstop.start()
    started = time.monotonic()
    rest = b"".join(body)
    elapsed = time.monotonic() - started
    backstop.cancel()
    assert elapsed < 3.5 and b"chat.session_closed" not in rest, "the feed waited for a client that had left"
    reply.close()
    ours.close()
