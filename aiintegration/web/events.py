"""Server-Sent Events for a `Feed` (commands/feeds.py): every message carries the stream id
as `id:`, so a client resumes with `Last-Event-ID` and misses nothing. A feed ends after its
terminal event, or after AII_SSE_MAX_S (the client reconnects with Last-Event-ID); the web
process runs gevent workers, so a waiting client costs a greenlet, not a thread."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, request, stream_with_context

from aiintegration.commands.feeds import Feed
from aiintegration.web.current import context

BLOCK_MS = 2000
Rows = list[tuple[str, dict[str, str]]]


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


def last_event_id() -> str | None:
    """What the client says it saw last (header, or `?last_event_id=` for clients that
    cannot set headers)."""
    return request.headers.get("Last-Event-ID") or request.args.get("last_event_id")


def sse(feed: Feed) -> Response:
    """The feed as a `text/event-stream` response. `feed.remaining(last_id)` is asked at the
    start and after every empty wait: a finished task's feed (compacted or not, resumed past
    its last event or not) ends at once instead of waiting."""
    settings = context().settings
    client_socket = request.environ.get("gunicorn.socket")  # absent under other servers
    heartbeat_s, max_s = settings.sse_heartbeat_s, settings.sse_max_s
    block_ms = min(int(heartbeat_s * 1000), BLOCK_MS)

    def messages(rows: Rows) -> tuple[str, str | None, bool]:
        """The SSE text of `rows` up to the feed's end, as one write (under load one read
        returns several events: one socket write for all of them), the last id sent, and
        whether the end was reached."""
        out, last_id = [], None
        for entry_id, fields in rows:
            out.append(f"id: {entry_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n")
            last_id = entry_id
            if feed.is_end(fields["type"]):
                return "".join(out), last_id, True
        return "".join(out), last_id, False

    feed.open()  # before the response starts: a store without a free connection is a JSON 503

    def generate() -> Iterator[str]:
        try:
            last, until = feed.after, time.monotonic() + max_s
            next_beat = time.monotonic() + heartbeat_s
            idle = True
            yield "retry: 2000\n\n"
            while time.monotonic() < until:
                rest = feed.remaining(last) if idle else None
                if rest is not None:
                    if rest:
                        yield messages(rest)[0]
                    return
                rows = feed.read(last, block_ms)
                if rows is None:  # Redis is away; the client reconnects (retry: 2000) with Last-Event-ID
                    return
                idle = not rows
                if idle:
                    if client_gone(client_socket):
                        return
                    if time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + heartbeat_s
                        yield ": heartbeat\n\n"
                    continue
                text, last_id, ended = messages(rows)
                last = last_id or last
                yield text
                if ended:
                    return
        finally:
            feed.close()

    response = Response(stream_with_context(generate()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(feed.close)  # also when the stream never started
    return response
