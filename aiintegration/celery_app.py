"""The Celery app: `celery -A aiintegration.celery_app worker|beat|flower`.

It is also what publishes every message the commands send (`CeleryPublisher`): importing
this module installs it as the publisher of the process's context (worker, beat), and the
web app factory and the CLI hand it to the contexts they build.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_init, worker_ready

from aiintegration import telemetry
from aiintegration.commands.context import get_context, use_publisher
from aiintegration.commands.liveness import worker_started
from aiintegration.commands.sweeps import start_deferred_releaser
from aiintegration.config import get_settings
from aiintegration.domain.routing import Route
from aiintegration.domain.states import to_broker_priority
from aiintegration.logs import configure


class _Sent:
    """What `send_task` hands back. Results live in the task record; Celery's AsyncResult
    would build a result backend per thread (per greenlet under gevent: ~5 ms each)."""

    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str) -> None:
        self.id = task_id


# ignore_result: without it every send SUBSCRIBEs to a result channel and UNSUBSCRIBEs when
# the result object is dropped (half the cost of a submission).
_SEND_OPTIONS: dict[str, Any] = {"ignore_result": True, "result_cls": _Sent, "add_to_parent": False}


class CeleryPublisher:
    """Puts the commands' messages on a Celery app's broker (`Publisher`)."""

    def __init__(self, app: Celery):
        self.app = app

    def enqueue_process_task(self, task_id: str, priority: int, countdown: float | None = None, *,
                             attempt: int = 1, route: Route | None = None) -> None:
        # The message id names the record and the attempt (`<task id>.<attempt>`): what Flower
        # lists, and what the worker's log line for that attempt carries, lead to the record.
        kwargs: dict[str, Any] = {"task_id": task_id}
        if route is not None:
            kwargs.update(task_type=route.task_type, pinned_provider=route.pinned)
        self.app.send_task("aiintegration.process_task", kwargs=kwargs, **_SEND_OPTIONS,
                           task_id=f"{task_id}.{attempt}", priority=to_broker_priority(priority),
                           countdown=countdown or None)

    def dispatch(self, name: str, kwargs: dict[str, Any]) -> None:
        self.app.send_task(name, kwargs=kwargs, **_SEND_OPTIONS)


# task_cls by name: the tasks' base class is resolved when the first task is made.
app = Celery("aiintegration", task_cls="aiintegration.tasks:SafeTask", include=["aiintegration.tasks.generation", "aiintegration.tasks.sweeps",
                                       "aiintegration.tasks.providers", "aiintegration.tasks.webhooks",
                                       "aiintegration.tasks.chat", "aiintegration.tasks.batches"])
app.config_from_object("celeryconfig")
use_publisher(CeleryPublisher(app))


@after_setup_logger.connect
def _structured_logs(loglevel: int | str | None = None, **_: Any) -> None:
    # The level given on the command line (`-l WARNING`), not INFO regardless: at INFO a worker
    # writes three lines per task (received, succeeded, the attempt's outcome).
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    configure(json_lines=get_settings().log_json, level=level if isinstance(level, int) else logging.INFO)


@worker_init.connect
def _tracing(**_: Any) -> None:
    telemetry.setup("aiintegration-worker")


@worker_ready.connect
def _announce(sender: Any = None, **_: Any) -> None:
    ctx = get_context()
    worker_started(ctx, getattr(sender, "hostname", "worker"))
    start_deferred_releaser(ctx)
