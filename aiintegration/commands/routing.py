"""The one place that chooses a provider for an attempt: the rule (`domain/routing.py`)
applied to the configs and order in Redis, with the SDK client of each provider built once.

Configs and order are cached per process until the provider version changes (checked at
most once a second), so the hot path costs no round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aiintegration.domain.batching import lane_provider
from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.routing import Candidate, alternatives, choose_provider, usable
from aiintegration.errors import NotFound
from aiintegration.providers import build_provider, provider_class
from aiintegration.providers.base import Provider
from aiintegration.store.providers import ProviderStore

REFRESH_S = 1.0


class Router:
    def __init__(self, store: ProviderStore, *, blocked_for: Callable[[str], float] = lambda name: 0.0,
                 on_retire: Callable[[Provider], None] = lambda provider: None):
        self.store = store
        self.blocked_for = blocked_for  # seconds until a provider's breaker lets a call through
        self.on_retire = on_retire  # a provider whose config changed: its calls in flight still use it
        self._lock = threading.Lock()
        self._checked = 0.0
        self._version = ""
        self._order: list[str] = []
        self._configs: dict[str, ProviderConfig] = {}
        self._candidates: dict[str, Candidate] = {}
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
                retired = [p for n, p in self._instances.items() if configs.get(n) != p.config]
                self._instances = {n: p for n, p in self._instances.items() if configs.get(n) == p.config}
                for provider in retired:
                    self.on_retire(provider)
                self._version, self._order, self._configs = version, order, configs
                self._candidates = {name: Candidate(name, c.enabled, provider_class(c.kind).capabilities)
                                    for name, c in configs.items()}
            self._checked = now

    def invalidate(self) -> None:
        """Re-read configs and order at the next use (after this process changed them)."""
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
        """The provider for one attempt (the rule: `domain.routing.choose_provider`)."""
        self._refresh()
        name = choose_provider(task_type, order=self._order, candidates=self._candidates,
                               blocked_for=self.blocked_for, pinned=pinned)
        return self.provider(name)

    def alternatives(self, task_type: str, *, excluding: str) -> list[Provider]:
        """Other providers that can take `task_type` now, in preference order."""
        self._refresh()
        return [self.provider(name) for name in alternatives(
            task_type, order=self._order, candidates=self._candidates, blocked_for=self.blocked_for,
            excluding=excluding)]
    def preferred(self, task_type: str) -> str | None:
        """The first enabled provider in the order that can do `task_type` (breakers aside):
        where an unpinned task most likely goes."""
        self._refresh()
        return next(usable(task_type, order=self._order, candidates=self._candidates), None)

    def config(self, name: str) -> ProviderConfig | None:
        self._refresh()
        return self._configs.get(name)

    def lane_provider(self, task_type: str, *, pinned: str | None = None) -> ProviderConfig | None:
        """The provider a batch-lane task waits for, or None: it stays realtime (the rule:
        `domain.batching.lane_provider`)."""
        self._refresh()
        name = lane_provider(task_type, order=self._order, configs=self._configs, pinned=pinned,
                             capabilities={n: c.capabilities for n, c in self._candidates.items()})
        return self._configs.get(name) if name else None
