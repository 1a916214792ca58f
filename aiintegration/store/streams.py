"""Stream commands on a connection one caller holds for a long run of them (an SSE feed's
reads, a streamed answer's deltas), sent and read directly: redis-py's per-command layers
(pool checkout with its readiness poll, retry wrapper, metrics hooks, reply callbacks) were
most of the CPU per event with 50 busy streams (bench/RESULTS.md)."""

from __future__ import annotations

from typing import Any

import redis

Rows = list[tuple[str, dict[str, str]]]


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
