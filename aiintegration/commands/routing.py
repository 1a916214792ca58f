"""The one place that chooses a provider for an attempt.

Configs and order come from Redis and are cached per process until the provider
version changes (checked at most once a second), so the hot path costs no round trip.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from aiintegration.errors import NotFound, ProviderUnavailable, UnsupportedCapability
from aiintegration.providers import build_provider
from aiintegration.providers.base import Provider, ProviderConfig
from aiintegration.store.providers import ProviderStore

REFRESH_S = 1.0


class Router:
    def __init__(self, store: ProviderStore, *, breaker_wait: Any = None):
        self.store = store
        # breaker_wait(name) -> seconds until its breaker lets a call through (0: now); the
        # circuit breaker plugs in here.
        self.breaker_wait = breaker_wait or (lambda name: 0.0)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._version = ""
        self._order: list[str] = []
        self._configs: dict[str, ProviderConfig] = {}
        self._instances: dict[str, Provider] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < REFRESH_S:
            return
        with self._lock:
            if now - self._checked < REFRESH_S:
                return
            if self.store.version() != self._version or not self._configs:
                version, order, configs = self.store.snapshot()
                # Rebuild only providers whose config changed, so SDK clients are reused.
                self._instances = {n: p for n, p in self._instances.items() if configs.get(n) == p.config}
                self._version, self._order, self._configs = version, order, configs
            self._checked = now

    def invalidate(self) -> None:
        self._checked = 0.0

    def provider(self, name: str) -> Provider:
        self._refresh()
        config = self._configs.get(name)
        if config is None:
            raise NotFound(f"unknown provider {name!r}")
        instance = self._instances.get(name)
        if instance is None:
            # Built once, under the lock: an SDK client costs ~50 ms of CPU (its TLS context),
            # and a burst of tasks arriving together must not each build their own.
            with self._lock:
                instance = self._instances.get(name)
                if instance is None:
                    instance = self._instances[name] = build_provider(config)
        return instance

    def known(self, name: str) -> bool:
        self._refresh()
        return name in self._configs

    def order(self) -> list[str]:
        self._refresh()
        return list(self._order)

    def choose(self, task_type: str, *, pinned: str | None = None) -> Provider:
        """The provider for one attempt: the pinned one, or the first in the preference
        order that is enabled, supports the task type and whose breaker is not open."""
        self._refresh()
        if pinned:
            provider = self.provider(pinned)
            if not provider.supports(task_type):
                raise UnsupportedCapability(f"provider {pinned!r} cannot do {task_type}", provider=pinned)
            if not provider.config.enabled:
                raise ProviderUnavailable(f"provider {pinned!r} is disabled", provider=pinned)
            wait = self.breaker_wait(pinned)
            if wait > 0:  # the retry is due when the breaker lets a probe through, not before
                raise ProviderUnavailable(f"provider {pinned!r} circuit breaker is open", provider=pinned,
                                          retry_after=wait)
            return provider
        capable = [n for n in self._order if n in self._configs and self.provider(n).supports(task_type)]
        if not capable:
            raise UnsupportedCapability(f"no configured provider can do {task_type}")
        waits = []
        for name in capable:
            if self._configs[name].enabled:
                wait = self.breaker_wait(name)
                if wait <= 0:
                    return self.provider(name)
                waits.append(wait)
        raise ProviderUnavailable(f"every provider for {task_type} is disabled or has an open circuit breaker",
                                  retry_after=min(waits) if waits else None)
