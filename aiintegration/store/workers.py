"""Worker liveness: each worker process records itself in a sorted set (`Keys.workers`,
score = last seen) every few seconds, for /readyz and the `aii_workers_alive` gauge."""

from __future__ import annotations

import time

import redis

from aiintegration.store.keys import Keys
from aiintegration.store.redis_client import check_server_config

FORGET_AFTER_S = 3600


class WorkerRegistry:
    def __init__(self, client: redis.Redis, *, keys: Keys):
        self.r = client
        self.keys = keys

    def seen(self, member: str, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {member: now})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now - FORGET_AFTER_S)
        pipe.execute()

    def alive(self, *, within_s: float = 15.0) -> int:
        """Worker processes seen in the last `within_s` seconds."""
        return int(self.r.zcount(self.keys.workers, time.time() - within_s, "+inf"))

    def server_warnings(self) -> list[str]:
        """What a worker says at start about the Redis server's settings (each also logged)."""
        return check_server_config(self.r)
