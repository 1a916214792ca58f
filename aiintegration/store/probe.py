"""One quick PING with no retries, for tools that must say at once whether Redis answers."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiintegration.store.redis_client import get_redis


def ping(url: str, *, timeout_s: float = 2.0) -> None:
    """Return when the server at `url` answers PING; raise its `redis.RedisError` otherwise
    (refused, timed out, wrong password, still loading, not a Redis at all)."""
    if url.startswith("sentinel://"):
        get_redis(url).ping()
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                  retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    finally:
        client.close()
