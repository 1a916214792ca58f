"""One Redis client per process and URL, shared by every thread of that process."""

from __future__ import annotations

import threading
from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


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
    return Sentinel(hosts, socket_timeout=5).master_for(master, db=db, decode_responses=True)


def get_redis(url: str) -> redis.Redis:
    """A shared client for `url` (redis://, rediss://, unix:// or sentinel://)."""
    with _lock:
        client = _clients.get(url)
        if client is None:
            if url.startswith("sentinel://"):
                client = _from_sentinel_url(url)
            else:
                client = redis.Redis.from_url(
                    url, decode_responses=True, health_check_interval=30, socket_keepalive=True,
                    retry_on_timeout=True,
                )
            _clients[url] = client
        return client
