"""Per-provider circuit breakers: pybreaker's state machine over its Redis storage, so every
worker process sees one state.

pybreaker's `call()` holds the breaker's lock for the whole protected call, which would
serialize concurrent provider calls. So the call is never wrapped: we ask `allows()` before
it and report `success()`/`failure()` after, driving pybreaker's own state objects.
Only transient failures count (the router never asks a permanent error to trip it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pybreaker
import redis

from aiintegration.commands.context import Context

log = logging.getLogger(__name__)
STATE_TTL_S = 0.5  # how stale a process's view of a breaker may be
RESET_EVERY_S = 0.5  # successes reset the shared failure counter at most this often
STATS_FLUSH_S = 1.0


class _Events(pybreaker.CircuitBreakerListener):
    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        kind = {"open": "provider.breaker_opened", "closed": "provider.breaker_closed"}.get(new.name)
        if kind and old is not None and old.name != new.name:
            self.ctx.tasks.append_global(kind, provider=self.name, previous=old.name, state=new.name)
            log.warning("circuit breaker %s: %s -> %s", self.name, old.name, new.name)


class ProviderBreaker:
    def __init__(self, ctx: Context, name: str, client: redis.Redis):
        s = ctx.settings
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client,
                                                namespace=f"{s.key_prefix}:breaker:{name}")
        self.name = name
        self.cb = pybreaker.CircuitBreaker(fail_max=s.breaker_fail_max, reset_timeout=s.breaker_reset_s,
                                           state_storage=storage, listeners=[_Events(ctx, name)], name=name)
        self._lock = threading.Lock()
        self._state: tuple[float, str] = (0.0, "closed")
        self._last_reset = 0.0
        self._redis, self._prefix = client, f"{s.key_prefix}:pstats:{name}"
        self._counts = {"ok": 0, "fail": 0}
        self._flushed = 0.0  # the first outcome is written at once

    def _count(self, outcome: str) -> None:
        """Outcomes per minute for the recent error rate; flushed at most once a second so
        the hot path does not pay a Redis round trip per call."""
        with self._lock:
            self._counts[outcome] += 1
            if time.monotonic() - self._flushed < STATS_FLUSH_S:
                return
            counts, self._counts, self._flushed = self._counts, {"ok": 0, "fail": 0}, time.monotonic()
        key = f"{self._prefix}:{int(time.time() // 60)}"
        try:
            pipe = self._redis.pipeline(transaction=False)
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
        pipe = self._redis.pipeline(transaction=False)
        for m in range(minute - window_min + 1, minute + 1):
            pipe.hmget(f"{self._prefix}:{m}", ["ok", "fail"])
        ok = fail = 0
        for row in pipe.execute():
            ok += int(row[0] or 0)
            fail += int(row[1] or 0)
        with self._lock:  # include what this process has not flushed yet
            ok, fail = ok + self._counts["ok"], fail + self._counts["fail"]
        return round(fail / (ok + fail), 4) if ok + fail else None

    def state(self, *, fresh: bool = False) -> str:
        """'closed' | 'open' | 'half-open', cached for STATE_TTL_S."""
        at, value = self._state
        if fresh or time.monotonic() - at > STATE_TTL_S:
            value = self.cb.current_state
            self._state = (time.monotonic(), value)
        return value

    def allows(self) -> bool:
        """False while open; after the reset timeout moves to half-open and lets calls probe."""
        return self.blocked_for() == 0

    def blocked_for(self) -> float:
        """Seconds until this breaker lets a call through: 0 when closed or half-open, or
        once an open breaker's reset timeout has passed (it then moves to half-open)."""
        if self.state() != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = self.cb._state_storage.opened_at
        left = opened_at.timestamp() + self.cb.reset_timeout - time.time() if opened_at else 0.0
        if left > 0:
            return left
        with self._lock:
            if self.state(fresh=True) == pybreaker.STATE_OPEN:
                self.cb.half_open()
            self._state = (time.monotonic(), self.cb.current_state)
        return 0.0

    def success(self) -> None:
        self._count("ok")
        state = self.state()
        now = time.monotonic()
        if state == pybreaker.STATE_CLOSED and now - self._last_reset < RESET_EVERY_S:
            return
        self._last_reset = now
        with self._lock:
            try:
                self.cb.state._handle_success()  # resets the shared counter; half-open → closed
            except redis.RedisError:
                log.warning("breaker %s: could not record success", self.name, exc_info=True)
            self._state = (0.0, state)

    def failure(self) -> None:
        self._count("fail")
        with self._lock:
            try:
                self.cb._inc_counter()
                self.cb.state.on_failure(RuntimeError("transient provider failure"))
            except (pybreaker.CircuitBreakerError, RuntimeError):
                pass  # pybreaker re-raises to its caller; we only wanted the state change
            except redis.RedisError:
                log.warning("breaker %s: could not record failure", self.name, exc_info=True)
            self._state = (0.0, "")
            self._last_reset = 0.0

    def public_state(self) -> str:
        return self.state(fresh=True).replace("-", "_")


def _registry(ctx: Context) -> dict[str, ProviderBreaker]:
    return ctx.once("breakers", dict)


def breaker_for(ctx: Context, name: str) -> ProviderBreaker:
    breakers = _registry(ctx)
    breaker = breakers.get(name)
    if breaker is None:
        client = ctx.once("breaker_redis", lambda: redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(ctx.settings.redis_url)) if not
            ctx.settings.redis_url.startswith("sentinel://") else ctx.tasks.r)
        breaker = breakers.setdefault(name, ProviderBreaker(ctx, name, client))
    return breaker


def breaker_wait_check(ctx: Context) -> Any:
    """The router's question: how long until this provider's breaker lets a call through
    (0: now)?"""
    return lambda name: breaker_for(ctx, name).blocked_for()
