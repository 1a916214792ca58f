"""Redis Streams: reading a task's or session's events, and the commands of a caller that
holds one connection for a long run of them (an SSE feed's reads, a streamed answer's
deltas), sent and read directly: redis-py's per-command layers (pool checkout with its
readiness poll, retry wrapper, metrics hooks, reply callbacks) were most of the CPU per
event with 50 busy streams (bench/RESULTS.md)."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, cast

import redis

from aiintegration.domain.events import MAX_ID_PART
from aiintegration.store.keys import Keys

log = logging.getLogger(__name__)
Rows = list[tuple[str, dict[str, str]]]
LAST_STREAM_ID = (MAX_ID_PART, MAX_ID_PART)


def stream_id_key(value: str) -> tuple[int, int]:
    """A stream id (`<ms>-<seq>`) as a sortable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def stream_after(client: redis.Redis, key: str, after: str) -> Rows:
    """Every entry of stream `key` after id `after` ("0-0": all of them; none after the
    largest id there can be, which XRANGE refuses as an exclusive start)."""
    if stream_id_key(after) == LAST_STREAM_ID:
        return []
    rows = cast(list[tuple[str, dict[str, str]]], client.xrange(key, f"({after}" if after != "0-0" else "-", "+"))
    return [(entry_id, dict(fields)) for entry_id, fields in rows]


def command(conn: Any, *args: Any) -> Any:
    """One command on `conn`, its raw reply. A failed or timed-out command drops the
    connection, so a late reply can never be read as the next command's."""
    try:
        conn.send_command(*args)
        return conn.read_response()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()
        raise


def entries(reply: Any, key: str) -> Rows:
    """XREAD's raw reply for one stream (RESP3: {key: entries}; RESP2: [[key, entries]];
    none when the block ran out) → [(id, fields)]."""
    if not reply:
        return []
    found = reply.get(key, []) if isinstance(reply, dict) else reply[0][1]
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in found]


def read_after(conn: Any, key: str, after: str, block_ms: int, count: int = 200) -> Rows:
    """Entries of stream `key` after id `after`, waiting up to `block_ms` for the first."""
    return entries(command(conn, "XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, after), key)


class StreamReader:
    """One stream followed on a pooled connection of its own for as long as the reader is
    open (`with reader:`): an SSE feed holds exactly one, returned when it ends."""

    def __init__(self, client: redis.Redis, key: str):
        self.pool = client.connection_pool
        self.key = key
        self._conn: Any = None
        self._broken = False

    def __enter__(self) -> StreamReader:
        self._conn = self.pool.get_connection()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.pool.release(conn)

    def read(self, after: str, block_ms: int) -> Rows | None:
        """Entries after `after`, waiting up to `block_ms` for the first ([] when none came).
        Rides over one dropped connection (the next read reconnects); None when Redis is
        away twice in a row — the caller ends, and its client resumes with Last-Event-ID —
        or when Redis refuses the read itself (an error reply): the feed ends cleanly, since
        the response has started and an exception could only cut it off mid-stream."""
        try:
            # Short blocks: a blocked read that outlives a socket timeout (seen under gevent)
            # is just "nothing yet", not an error that ends the feed.
            rows = read_after(self._conn, self.key, after, block_ms)
        except redis.TimeoutError:
            return []
        except redis.ConnectionError:
            if self._broken:
                return None
            self._broken = True
            return []
        except redis.ResponseError as exc:  # the reply was read whole: the connection stays usable
            log.warning("reading stream %s failed, ending the feed: %s", self.key, str(exc)[:200])
            return None
        self._broken = False
        return rows


# KEYS: the tenant's open feeds. ARGV: feed id, now, lease end, limit.
# Forgets feeds whose lease ran out (their web process died), then takes a slot if one is
# free. Returns 1, or 0 when the tenant already has `limit` feeds open.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], 86400)
return 1
"""


class OpenFeeds:
    """How many event feeds each tenant holds open, across every web process: a slot per
    feed, leased and renewed while it is followed, so a web process that dies frees its slots."""

    def __init__(self, client: redis.Redis, *, keys: Keys, lease_s: float = 60.0):
        self.r, self.keys, self.lease_s = client, keys, lease_s
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self, tenant: str, feed_id: str, *, limit: int) -> bool:
        now = time.time()
        return bool(self._acquire(keys=[self.keys.open_feeds(tenant)], args=[feed_id, now, now + self.lease_s, limit]))

    def renew(self, tenant: str, feed_id: str) -> None:
        try:
            self.r.zadd(self.keys.open_feeds(tenant), {feed_id: time.time() + self.lease_s}, xx=True)
        except redis.RedisError:
            pass  # the slot's lease runs out by itself; the feed goes on

    def release(self, tenant: str, feed_id: str) -> None:
        try:
            self.r.zrem(self.keys.open_feeds(tenant), feed_id)
        except redis.RedisError:
            pass  # the slot's lease runs out by itself
