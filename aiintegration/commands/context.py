"""What every command needs, built once per process: settings, the stores, the router, the
attempt runner, and the publisher that puts messages on the broker.

Commands never import Celery. An entry point hands the context its publisher: the Celery app
installs one for its process (`use_publisher`, as dramatiq's `set_broker`), the Flask app
factory and the CLI build their own `Context` around the Celery app they hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiintegration.commands.routing import Router
from aiintegration.commands.runner import AttemptRunner
from aiintegration.config import Settings, get_settings
from aiintegration.domain.providers import default_configs
from aiintegration.domain.routing import Route
from aiintegration.store.batches import BatchStore
from aiintegration.store.breakers import Breakers
from aiintegration.store.broker_queue import BrokerQueue
from aiintegration.store.chat import ChatStore
from aiintegration.store.dlq import DlqStore
from aiintegration.store.events import EventLog
from aiintegration.store.keys import Keys
from aiintegration.store.metrics import MetricsStore
from aiintegration.store.providers import ProviderStore
from aiintegration.store.quotas import QuotaStore
from aiintegration.store.redis_client import get_redis
from aiintegration.store.streams import OpenFeeds
from aiintegration.store.sweeps import SweepStore
from aiintegration.store.tasks import TaskStore
from aiintegration.store.usage import UsageStore
from aiintegration.store.workers import WorkerRegistry

log = logging.getLogger("aiintegration")


def breaker_event(events: EventLog, provider: str, old: str, new: str) -> None:
    """A breaker that opened or closed is an event operators see (`provider.breaker_*`)."""
    kind = {"open": "provider.breaker_opened", "closed": "provider.breaker_closed"}.get(new)
    if kind:
        events.append(kind, provider=provider, previous=old, state=new)
        log.warning("circuit breaker %s: %s -> %s", provider, old, new)


class Publisher(Protocol):
    """Puts task messages on the broker (the Celery app's, in production)."""

    def enqueue_process_task(self, task_id: str, priority: int, countdown: float | None = None, *,
                             attempt: int = 1, route: Route | None = None) -> None:
        """A process_task message for attempt `attempt` of `task_id` at API priority
        `priority`, due after `countdown` s, carrying the task's `route` when given."""

    def dispatch(self, name: str, kwargs: dict[str, Any]) -> None:
        """Any other task, by its stable name."""


@dataclass
class Context:
    settings: Settings
    publisher: Publisher
    tasks: TaskStore
    dlq: DlqStore
    chats: ChatStore
    providers: ProviderStore
    events: EventLog
    breakers: Breakers
    broker: BrokerQueue
    workers: WorkerRegistry
    sweeps: SweepStore
    metrics: MetricsStore
    feeds: OpenFeeds
    quotas: QuotaStore
    usage: UsageStore
    router: Router
    runner: AttemptRunner
    lane: BatchStore
    clock: Callable[[], float] = time.time

    @classmethod
    def build(cls, settings: Settings, publisher: Publisher, *, clock: Callable[[], float] = time.time) -> Context:
        """Every part on one Redis client; the providers of AII_PROVIDERS seeded unless configured."""
        s = settings
        client = get_redis(s.redis_url, max_connections=s.redis_max_connections)
        keys = Keys(s.key_prefix)
        events = EventLog(client, keys=keys, maxlen=s.global_stream_maxlen)
        providers = ProviderStore(client, keys=keys, defaults=default_configs(
            s.providers, s.provider_env, local_latency_ms=s.local_latency_ms))
        breakers = Breakers(s.redis_url, client, keys=keys, fail_max=s.breaker_fail_max, reset_s=s.breaker_reset_s,
                            on_change=lambda name, old, new: breaker_event(events, name, old, new))
        metrics = MetricsStore(client, keys=keys, flush_s=s.metrics_flush_s)
        tasks = TaskStore(client, keys=keys, metrics=metrics, retention_s=s.retention_s,
                          compact_after_s=s.events_compact_after_s, idempotency_ttl_s=s.idempotency_ttl_s,
                          task_stream_maxlen=s.task_stream_maxlen, global_stream_maxlen=s.global_stream_maxlen)
        runner = AttemptRunner(tasks, lease_s=s.lease_s)
        # A replaced provider's client closes once no attempt can still be using it.
        router = Router(providers, blocked_for=breakers.blocked_for,
                        on_retire=lambda provider: runner.retire(provider, after_s=s.max_task_timeout_s + 30))
        ctx = cls(
            settings=s, publisher=publisher, tasks=tasks, dlq=DlqStore(client, keys=keys),
            chats=ChatStore(client, keys=keys, retention_s=s.retention_s, idle_ttl_s=s.chat_idle_ttl_s), providers=providers, events=events,
            breakers=breakers, broker=BrokerQueue(client), workers=WorkerRegistry(client, keys=keys),
            sweeps=SweepStore(client, keys=keys), metrics=metrics,
            feeds=OpenFeeds(client, keys=keys), quotas=QuotaStore(client, keys=keys, window_s=s.quota_window_s),
            usage=UsageStore(client, keys=keys), router=router, runner=runner,
            lane=BatchStore(client, keys=keys, retention_s=s.retention_s), clock=clock,
        )
        providers.seed()
        return ctx

    def enqueue(self, task_id: str, priority: int, countdown: float | None = None, *, attempt: int = 1,
                route: Route | None = None) -> None:
        """`route`: the task's (its attempt can then choose a provider before reading it)."""
        self.publisher.enqueue_process_task(task_id, priority, countdown, attempt=attempt, route=route)


_lock = threading.Lock()
_publisher: Publisher | None = None
_context: Context | None = None


def use_publisher(publisher: Publisher) -> None:
    """The publisher of this process's context (the Celery app installs its own at import)."""
    global _publisher
    _publisher = publisher


def get_context() -> Context:
    """The process-wide context, from the environment, built on first use."""
    global _context
    with _lock:
        if _context is None:
            if _publisher is None:
                raise RuntimeError("no publisher installed: load aiintegration.celery_app (worker, beat) "
                                   "or build a Context with one (web app, CLI)")
            _context = Context.build(get_settings(), _publisher)
        return _context
