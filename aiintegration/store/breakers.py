"""Per-provider circuit breakers: pybreaker's state machine over its Redis storage, so every
worker process sees one state, and the recent outcome counts behind each provider's error
rate.

pybreaker's `call()` holds the breaker's lock for the whole protected call, which would
serialize concurrent provider calls (FACTS.md). So the provider call is never wrapped:
`ProviderBreaker` asks `blocked_for()` before it and reports `success()` / `failure()`
after, each reported through pybreaker's own public `call()` around an instant function
that returns or raises — the state machine, counters and listeners stay pybreaker's, and
no private attribute is touched (tests/unit/test_breaker.py fails if pybreaker's public
behaviour changes under it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import redis

from aiintegration.store.keys import Keys
from aiintegration.store.redis_client import get_redis

log = logging.getLogger(__name__)
STATE_TTL_S = 0.5  # how stale a process's view of a breaker may be
RESET_EVERY_S = 0.5  # successes reset the shared failure counter at most this often
STATS_FLUSH_S = 1.0
OnChange = Callable[[str, str, str], None]  # (provider, old state, new state)


class _ProviderFailed(Exception):
    """Stands for a transient provider failure inside pybreaker's `call()`."""


def _fail() -> None:
    raise _ProviderFailed


def _succeed() -> None:
    return None


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, name: str, on_change: OnChange):
        self.name, self.on_change = name, on_change

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        if old is not None and old.name != new.name:
            self.on_change(self.name, old.name, new.name)


class ProviderBreaker:
    """One provider's breaker over any pybreaker storage (Redis in production)."""

    def __init__(self, name: str, storage: pybreaker.CircuitBreakerStorage, *, fail_max: int, reset_s: float,
                 on_change: OnChange | None = None, outcomes: OutcomeCounts | None = None):
        self.name = name
        self.storage = storage
        listeners = [_Listener(name, on_change)] if on_change else []
        self.cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_s, state_storage=storage,
                                           listeners=listeners, name=name)
        self.outcomes = outcomes
        self._lock = threading.Lock()
        self._state: tuple[float, str] = (0.0, pybreaker.STATE_CLOSED)
        self._last_reset = 0.0

    def state(self, *, fresh: bool = False) -> str:
        """'closed' | 'open' | 'half-open', cached for STATE_TTL_S."""
        at, value = self._state
        if fresh or time.monotonic() - at > STATE_TTL_S:
            value = self.cb.current_state
            self._state = (time.monotonic(), value)
        return value

    def public_state(self) -> str:
        return self.state(fresh=True).replace("-", "_")

    def allows(self) -> bool:
        return self.blocked_for() == 0

    def blocked_for(self) -> float:
        """Seconds until this breaker lets a call through: 0 when closed or half-open, or
        once an open breaker's reset timeout has passed (it then moves to half-open)."""
        if self.state() != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = self.storage.opened_at
        left = opened_at.timestamp() + self.cb.reset_timeout - time.time() if opened_at else 0.0
        if left > 0:
            return left
        with self._lock:
            if self.state(fresh=True) == pybreaker.STATE_OPEN:
                self.cb.half_open()
            self._state = (time.monotonic(), self.cb.current_state)
        return 0.0

    def _report(self, outcome: Callable[[], None]) -> None:
        try:
            self.cb.call(outcome)
        except (_ProviderFailed, pybreaker.CircuitBreakerError):
            pass  # pybreaker re-raises to its caller; we only wanted the state change
        except redis.RedisError:
            log.warning("breaker %s: could not record the outcome", self.name, exc_info=True)

    def success(self) -> None:
        if self.outcomes:
            self.outcomes.count("ok")
        state = self.state()
        now = time.monotonic()
        if state == pybreaker.STATE_CLOSED and now - self._last_reset < RESET_EVERY_S:
            return  # the shared failure counter was reset a moment ago
        self._last_reset = now
        if state != pybreaker.STATE_OPEN:  # a call that started before the breaker opened proves nothing
            self._report(_succeed)  # resets the shared counter; half-open → closed
        self._state = (0.0, state)

    def failure(self) -> None:
        if self.outcomes:
            self.outcomes.count("fail")
        if self.state(fresh=True) != pybreaker.STATE_OPEN:
            self._report(_fail)  # counts; closed → open at fail_max, half-open → open
        self._state = (0.0, "")
        self._last_reset = 0.0

    def error_rate(self) -> float | None:
        return self.outcomes.error_rate() if self.outcomes else None


class OutcomeCounts:
    """A provider's call outcomes per minute (for its recent error rate), flushed at most
    once a second so the hot path pays no Redis round trip per call."""

    def __init__(self, client: redis.Redis, *, keys: Keys, name: str):
        self.r, self.keys, self.name = client, keys, name
        self._lock = threading.Lock()
        self._counts = {"ok": 0, "fail": 0}
        self._flushed = 0.0  # the first outcome is written at once

    def count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
            if time.monotonic() - self._flushed < STATS_FLUSH_S:
                return
            counts, self._counts, self._flushed = self._counts, {"ok": 0, "fail": 0}, time.monotonic()
        key = self.keys.provider_outcomes(self.name, int(time.time() // 60))
        try:
            pipe = self.r.pipeline(transaction=False)
            for field, n in counts.items():
                if n:
                    pipe.hincrby(key, field, n)
            pipe.expire(key, 900)
            pipe.execute()
        except redis.RedisError:
            log.warning("breaker %s: could not record outcome counts", self.name)

    def error_rate(self, window_min: int = 5) -> float | None:
        """Share of transient failures among calls in the last few minutes (None: no calls)."""
        minute = int(time.time() // 60)
        pipe = self.r.pipeline(transaction=False)
        for m in range(minute - window_min + 1, minute + 1):
            pipe.hmget(self.keys.provider_outcomes(self.name, m), ["ok", "fail"])
        ok = fail = 0
        for row in pipe.execute():
            ok += int(row[0] or 0)
            fail += int(row[1] or 0)
        with self._lock:  # include what this process has not flushed yet
            ok, fail = ok + self._counts["ok"], fail + self._counts["fail"]
        return round(fail / (ok + fail), 4) if ok + fail else None


class Breakers:
    """The breakers of one process, one per provider, sharing their state through Redis."""

    def __init__(self, url: str, client: redis.Redis, *, keys: Keys, fail_max: int, reset_s: float,
                 on_change: OnChange):
        # pybreaker's Redis storage reads bytes: a client of its own, not the decoding one
        # (with sentinel:// too: handing it the decoding client broke every breaker there).
        self._bytes_client = get_redis(url, decode_responses=False)
        self._client, self._keys = client, keys
        self._fail_max, self._reset_s, self._on_change = fail_max, reset_s, on_change
        self._breakers: dict[str, ProviderBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> ProviderBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, self._bytes_client,
                                                            namespace=self._keys.breaker(name))
                    breaker = self._breakers[name] = ProviderBreaker(
                        name, storage, fail_max=self._fail_max, reset_s=self._reset_s, on_change=self._on_change,
                        outcomes=OutcomeCounts(self._client, keys=self._keys, name=name))
        return breaker

    def blocked_for(self, name: str) -> float:
        """The router's question: seconds until `name`'s breaker lets a call through."""
        return self[name].blocked_for()
