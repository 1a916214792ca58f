"""One Redis client per process and URL, shared by every thread of that process, and the
server settings this store is sized for."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.driver_info import DriverInfo
from redis.sentinel import Sentinel, SentinelConnectionPool

_clients: dict[tuple[str, bool], redis.Redis] = {}
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


@dataclass(frozen=True)
class SentinelUrl:
    """A `sentinel://` URL in kombu's form, `sentinel://h1:26379;sentinel://h2:26379/0?master_name=mymaster`:
    every Sentinel (`user:password@` is the primary's login, as kombu reads it), the database
    (the last path given) and the monitored primary's name."""

    netlocs: tuple[str, ...]
    db: int
    master_name: str

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        netlocs, db, master = [], 0, "mymaster"
        for part in url.split(";"):
            parsed = urlparse(part)
            netlocs.append(parsed.netloc)
            if parsed.path.strip("/"):
                db = int(parsed.path.strip("/"))
            master = parse_qs(parsed.query).get("master_name", [master])[0]
        return cls(tuple(netlocs), db, master)

    @property
    def hosts(self) -> list[tuple[str, int]]:
        return [(p.hostname or "127.0.0.1", p.port or 26379) for p in (urlparse(f"//{n}") for n in self.netlocs)]

    @property
    def login(self) -> dict[str, str]:
        """The primary's username/password, from the first Sentinel URL that has them."""
        for parsed in (urlparse(f"//{n}") for n in self.netlocs):
            if parsed.password:
                return {"username": unquote(parsed.username or ""), "password": unquote(parsed.password)}
        return {}

    def for_kombu(self) -> str:
        """The URL as kombu and Celery's result backend read it: they take the database and the
        login from the first Sentinel's URL only, and the primary's name from transport options."""
        return ";".join(f"sentinel://{netloc}/{self.db}" for netloc in self.netlocs)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool (asks the Sentinels where the primary is at each new connection
    and drops the connections to one that was demoted) with the blocking checkout of the
    redis:// pool: redis-py's own Sentinel pool is unbounded, or with `max_connections` raises
    at once instead of waiting, and the sentinel:// client used to ignore
    AII_REDIS_MAX_CONNECTIONS, keepalive and health checks altogether."""


def _from_sentinel_url(url: str, **pool_options: Any) -> redis.Redis:
    parsed = SentinelUrl.parse(url)
    sentinel = Sentinel(parsed.hosts, socket_timeout=5)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.master_name, connection_pool_class=_BlockingSentinelPool, db=parsed.db, **parsed.login,
        **pool_options)
    return client


def _driver_info() -> DriverInfo:
    """What each connection tells the server about its client (CLIENT SETINFO), looked up
    once: redis-py 8 reads its own version from the package metadata for every connection it
    builds unless given this (0.34 ms of CPU per connection, 0.03 ms with it, measured here),
    and a worker with 1,000 threads opens hundreds of connections in its first seconds."""
    global _driver
    if _driver is None:
        _driver = DriverInfo()
    return _driver


_driver: DriverInfo | None = None


def get_redis(url: str, *, max_connections: int = 1000, pool_timeout_s: float = 5.0,
              decode_responses: bool = True) -> redis.Redis:
    """A shared client for `url` (redis://, rediss://, unix:// or sentinel://), answering str
    (or bytes with `decode_responses=False`, for pybreaker's storage).

    The pool blocks (up to `pool_timeout_s`) instead of failing when every connection is in
    use: redis-py's default pool stops at 100 connections and raises at once, and a gevent
    web worker with many SSE clients (each one's XREAD BLOCK holds a connection) needs more.
    Commands time out after redis-py's default 5 s socket timeout, so a blocking read must
    block for less than that."""
    options = {"max_connections": max_connections, "timeout": pool_timeout_s, "decode_responses": decode_responses,
               "health_check_interval": 30, "socket_keepalive": True, "retry_on_timeout": True,
               "driver_info": _driver_info()}
    with _lock:
        client = _clients.get((url, decode_responses))
        if client is None:
            if url.startswith("sentinel://"):
                client = _from_sentinel_url(url, **options)
            else:
                client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
            _clients[(url, decode_responses)] = client
        return client
