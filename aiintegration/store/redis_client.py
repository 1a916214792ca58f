"""One Redis client per process and URL, shared by every thread of that process, and the
server settings this store is sized for."""

from __future__ import annotations

import logging
import threading
from typing import cast
from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()
log = logging.getLogger(__name__)

# Server settings that keep a finished task record near 3 KiB instead of ~7 KiB
# (bench/memory_and_sweeps.py). Redis and Valkey preallocate a stream's first node to
# stream-node-max-bytes (4096 by default), so every task's own event stream of three or
# four events costs 4 KiB; and a hash with any value over hash-max-listpack-value (64)
# bytes leaves the compact listpack encoding, which a record with a prompt always has.
# The embedded Valkey starts with them; a managed Redis needs them in its parameter group.
RECOMMENDED_SERVER_CONFIG = {"hash-max-listpack-value": 1024, "stream-node-max-bytes": 1024}


# Policies that may evict keys without a TTL: queued records and broker messages would vanish.
EVICTING_POLICIES = frozenset({"allkeys-lru", "allkeys-lfu", "allkeys-random", "allkeys-lrm"})


def check_server_config(client: redis.Redis) -> list[str]:
    """One warning per setting that loses data or wastes memory (none when CONFIG GET is
    refused, as on some managed services — set them in its parameter group); each is logged."""
    try:
        found = cast(dict[str, str], client.config_get("*"))
    except redis.RedisError:
        return []
    warnings = []
    for name, wanted in RECOMMENDED_SERVER_CONFIG.items():
        current = found.get(name)
        if current is not None and current.isdigit() and int(current) != wanted:
            warnings.append(f"Redis {name} is {current}; {wanted} makes finished task records "
                            f"less than half the size (README, 'Redis settings')")
    if found.get("appendonly") == "no" and not found.get("save", "").strip():
        warnings.append("Redis runs without persistence (appendonly no, no save points): a restart loses every "
                        "queued task and broker message; use appendonly yes (README, 'Redis settings')")
    policy = found.get("maxmemory-policy", "")
    if policy in EVICTING_POLICIES:
        warnings.append(f"Redis maxmemory-policy is {policy}: under memory pressure it evicts queued tasks and "
                        f"broker messages; use noeviction (README, 'Redis settings')")
    for warning in warnings:
        log.warning(warning)
    return warnings


def _from_sentinel_url(url: str) -> redis.Redis:
    # kombu's form: sentinel://h1:26379;sentinel://h2:26379/0?master_name=mymaster
    hosts, db, master = [], 0, "mymaster"
    for part in url.split(";"):
        parsed = urlparse(part)
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        for pair in parsed.query.split("&"):
            if pair.startswith("master_name="):
                master = pair.split("=", 1)[1]
    sentinel = Sentinel(hosts, socket_timeout=5)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    client: redis.Redis = sentinel.master_for(master, db=db, decode_responses=True)  # type: ignore[no-untyped-call]
    return client


def get_redis(url: str, *, max_connections: int = 1000, pool_timeout_s: float = 5.0) -> redis.Redis:
    """A shared client for `url` (redis://, rediss://, unix:// or sentinel://).

    The pool blocks (up to `pool_timeout_s`) instead of failing when every connection is in
    use: redis-py's default pool stops at 100 connections and raises at once, and a gevent
    web worker with many SSE clients (each one's XREAD BLOCK holds a connection) needs more.
    Commands time out after redis-py's default 5 s socket timeout, so a blocking read must
    block for less than that."""
    with _lock:
        client = _clients.get(url)
        if client is None:
            if url.startswith("sentinel://"):
                client = _from_sentinel_url(url)
            else:
                pool = redis.BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=pool_timeout_s, decode_responses=True,
                    health_check_interval=30, socket_keepalive=True, retry_on_timeout=True)
                client = redis.Redis(connection_pool=pool)
            _clients[url] = client
        return client
