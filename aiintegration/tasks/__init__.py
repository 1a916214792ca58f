"""Thin Celery tasks: parse arguments, call one command, map the error tree onto retry/DLQ."""

from __future__ import annotations

import socket
import threading
from typing import Any, TypedDict

import redis

from aiintegration.errors import AIIntegrationError

# Errors of the caller's making are answered, not retried: they go back in the result.
CALLER_ERRORS = (AIIntegrationError,)


class TaskPolicy(TypedDict, total=False):
    """The Celery options a task declares (its own retry/backoff policy)."""

    acks_late: bool
    ignore_result: bool
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool
    max_retries: int


def policy(*, answered: bool, infra_retry: bool = False) -> TaskPolicy:
    """Every task is acknowledged after it ran (a worker that dies hands the message back);
    `answered`: the caller may wait for its reply; `infra_retry`: Redis blips are retried by
    Celery itself with backoff (everything else is the command's to handle)."""
    if not infra_retry:
        return TaskPolicy(acks_late=True, ignore_result=not answered)
    return TaskPolicy(acks_late=True, ignore_result=not answered,
                      autoretry_for=(redis.ConnectionError, redis.TimeoutError), retry_backoff=1, retry_backoff_max=30,
                      retry_jitter=True, max_retries=5)


def current_worker_id(task: Any) -> str:
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    return f"{hostname}/{threading.current_thread().name}"


def error_result(exc: AIIntegrationError) -> dict[str, Any]:
    return {"ok": False, "error": {**exc.to_dict(), "details": exc.details, "status": exc.http_status}}
