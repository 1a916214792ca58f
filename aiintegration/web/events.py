"""Server-Sent Events from Redis Streams (XREAD BLOCK): every message carries the stream id
as `id:`, so a client resumes with `Last-Event-ID` and misses nothing. A feed ends after its
terminal event, or after AII_SSE_MAX_S (the client reconnects with Last-Event-ID); the web
process runs gevent workers, so a waiting client costs a greenlet, not a thread."""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Response, request, stream_with_context

from aiintegration.errors import ValidationError
from aiintegration.store import streams
from aiintegration.web import context

BLOCK_MS = 2000
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def client_gone(sock: Any) -> bool:
    """True when the client has closed its end of `sock` (readable, and nothing to read).
    An idle feed asks this between reads, so a client that left frees its greenlet and
    Redis connection within one read block instead of at the next heartbeat write."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # closed or reset under us
        return True


def last_event_id() -> str:
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0-0"
    if not STREAM_ID.match(value):
        raise ValidationError("Last-Event-ID must be a stream id such as 1732467600000-0",
                              details={"Last-Event-ID": value})
    return value


Rows = streams.Rows


def feed(stream_key: str, *, is_end: Callable[[str], bool], after: str,
         final: Callable[[str], Rows | None] | None = None) -> Response:
    """`final(last_id)`, when given, returns None while more events may come, else the
    remaining events after `last_id` (from wherever they are kept), and the feed ends after
    them. It is asked at the start and after every empty wait: a finished task's feed
    (compacted or not, resumed past its last event or not) ends at once instead of waiting."""
    ctx = context()
    client_socket = request.environ.get("gunicorn.socket")  # absent under other servers
    heartbeat_ms = int(ctx.settings.sse_heartbeat_s * 1000)
    max_s = ctx.settings.sse_max_s

    def messages(rows: Rows) -> tuple[str, str | None, bool]:
        """The SSE text of `rows` up to the feed's end, as one write (under load one read
        returns several events: one socket write for all of them), the last id sent, and
        whether the end was reached."""
        out, last_id = [], None
        for entry_id, fields in rows:
            out.append(f"id: {entry_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n")
            last_id = entry_id
            if is_end(fields["type"]):
                return "".join(out), last_id, True
        return "".join(out), last_id, False

    def generate() -> Iterator[str]:
        pool = ctx.redis.connection_pool
        conn = pool.get_connection()  # the feed's own, for all its reads (store/streams.py)
        try:
            yield from _read(conn)
        finally:
            pool.release(conn)

    def _read(conn: Any) -> Iterator[str]:
        last, until = after, time.monotonic() + max_s
        next_beat = time.monotonic() + heartbeat_ms / 1000
        idle, broken = True, False
        yield "retry: 2000\n\n"
        while time.monotonic() < until:
            rest = final(last) if final is not None and idle else None
            if rest is not None:
                if rest:
                    yield messages(rest)[0]
                return
            try:
                # Short blocks: a blocked read that outlives a socket timeout (seen under
                # gevent) is just "nothing yet", not an error that ends the feed.
                rows = streams.read_after(conn, stream_key, last, min(heartbeat_ms, BLOCK_MS))
            except redis.TimeoutError:
                rows = []
            except redis.ConnectionError:
                if broken:  # twice in a row: Redis is away; the client reconnects (retry: 2000)
                    return  # with Last-Event-ID and misses nothing
                broken, rows = True, []  # a dropped connection: the next read reconnects
            else:
                broken = False
            idle = not rows
            if idle:
                if client_gone(client_socket):
                    return
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + heartbeat_ms / 1000
                    yield ": heartbeat\n\n"
                continue
            text, last_id, ended = messages(rows)
            last = last_id or last
            yield text
            if ended:
                return

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
