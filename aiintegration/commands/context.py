"""What every command needs, built once per process: settings, stores, router, enqueue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiintegration.config import Settings, get_settings
from aiintegration.store.providers import ProviderStore, default_configs
from aiintegration.store.redis_client import get_redis
from aiintegration.store.tasks import TaskStore

log = logging.getLogger("aiintegration")

# enqueue(task_id, api_priority, countdown_s) puts a process_task message on the broker.
Enqueue = Callable[[str, int, float | None], None]


class _Sent:
    """What `send_task` hands back. Results live in the task record; Celery's AsyncResult
    would build a result backend per thread (per greenlet under gevent: ~5 ms each)."""

    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str) -> None:
        self.id = task_id


# ignore_result: without it every send SUBSCRIBEs to a result channel and UNSUBSCRIBEs when
# the result object is dropped (half the cost of a submission).
_SEND_OPTIONS: dict[str, Any] = {"ignore_result": True, "result_cls": _Sent, "add_to_parent": False}


def publish(app: Any, name: str, kwargs: dict[str, Any], **options: Any) -> None:
    """Put one task message on `app`'s broker (every message the commands send comes here)."""
    app.send_task(name, kwargs=kwargs, **_SEND_OPTIONS, **options)


def enqueue_process_task(app: Any, task_id: str, priority: int, countdown: float | None = None) -> None:
    from aiintegration.domain.states import to_broker_priority

    publish(app, "aiintegration.process_task", {"task_id": task_id}, priority=to_broker_priority(priority),
            countdown=countdown or None)


def celery_enqueue(task_id: str, priority: int, countdown: float | None = None) -> None:
    from aiintegration.celery_app import app

    enqueue_process_task(app, task_id, priority, countdown)


def celery_dispatch(name: str, kwargs: dict[str, Any]) -> None:
    from aiintegration.celery_app import app

    publish(app, name, kwargs)


@dataclass
class Context:
    settings: Settings
    tasks: TaskStore
    providers: ProviderStore
    enqueue: Enqueue = celery_enqueue
    dispatch: Callable[[str, dict[str, Any]], None] = celery_dispatch  # any other task, by name
    clock: Callable[[], float] = time.time
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Context:
        client = get_redis(settings.redis_url, max_connections=settings.redis_max_connections)
        ctx = cls(
            settings=settings,
            tasks=TaskStore(client, prefix=settings.key_prefix, retention_s=settings.retention_s,
                            idempotency_ttl_s=settings.idempotency_ttl_s,
                            task_stream_maxlen=settings.task_stream_maxlen,
                            global_stream_maxlen=settings.global_stream_maxlen),
            providers=ProviderStore(client, prefix=settings.key_prefix),
            **overrides,
        )
        ctx.providers.seed(default_configs(settings.providers, settings.provider_env,
                                           local_latency_ms=settings.local_latency_ms))
        return ctx

    @property
    def redis(self) -> Any:
        return self.tasks.r

    def once(self, name: str, build: Callable[[], Any]) -> Any:
        """A per-context singleton (router, runner), built on first use."""
        with _lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]


_lock = threading.RLock()
_context: Context | None = None


def get_context() -> Context:
    """The process-wide context, from the environment."""
    global _context
    with _lock:
        if _context is None:
            _context = Context.from_settings(get_settings())
        return _context


def set_context(ctx: Context | None) -> None:
    """Replace the process-wide context (tests, the web app factory)."""
    global _context
    with _lock:
        _context = ctx
