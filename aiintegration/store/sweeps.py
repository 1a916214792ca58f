"""What the beat sweeps keep in Redis: a lock per sweep (two beat processes started by
mistake never sweep at once) and the pending sweep's last counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import redis

from aiintegration.domain.records import dumps
from aiintegration.store.keys import Keys

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class SweepStore:
    def __init__(self, client: redis.Redis, *, keys: Keys):
        self.r = client
        self.keys = keys
        self._release = client.register_script(_RELEASE)

    @contextmanager
    def lock(self, name: str, *, ttl_s: int = 120) -> Iterator[bool]:
        """Yields whether this caller holds the sweep's lock; released (only if still ours)
        on exit, and expiring by itself if the holder dies."""
        key, token = self.keys.lock(name), uuid.uuid4().hex
        got = bool(self.r.set(key, token, nx=True, ex=ttl_s))
        try:
            yield got
        finally:
            if got:
                self._release(keys=[key], args=[token])

    def record_counts(self, *, at: float, counts: Mapping[str, int], requeued: int) -> None:
        self.r.hset(self.keys.sweep_stats, mapping={"at": at, "counts": dumps(dict(counts)), "requeued": requeued})
