"""Thin Celery tasks: parse arguments, call one command, map the error tree onto retry/DLQ."""

from __future__ import annotations

import socket
import threading
from typing import Any, TypedDict

import redis
from celery import Task
from celery.worker.request import Request

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


# Argument values a task's events and log lines may show as they are: ids and names. Anything
# else (prompts, chat messages, contexts, provider configs with their keys) shows as its size.
SHOWN_ARGUMENTS = frozenset({
    "task_id", "session_id", "worker_id", "max_processing_time", "priority", "task_type", "requested_by", "tenant",
    "provider", "from_provider", "to_provider", "idempotency_key", "delay"})
# Tasks whose reply carries a record, a session or a config: Flower is told only that they succeeded.
PRIVATE_RESULTS = frozenset({
    "aiintegration.retry_task", "aiintegration.cancel_task", "aiintegration.start_chat_session",
    "aiintegration.close_chat_session", "aiintegration.update_provider_config"})


def describe(value: Any) -> str:
    """A value as an operator may see it in Flower: its kind and size, not its content."""
    if isinstance(value, str):
        return f"<text, {len(value)} chars>"
    if isinstance(value, dict):
        return f"<object, {len(value)} keys>"
    if isinstance(value, list | tuple):
        return f"<list, {len(value)} items>"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"<{type(value).__name__}>"


def safe_kwargs(kwargs: dict[str, Any]) -> str:
    parts = []
    for name, value in kwargs.items():
        plain = isinstance(value, str | int | float | bool) or value is None
        shown = repr(value) if name in SHOWN_ARGUMENTS and plain and len(str(value)) <= 200 else describe(value)
        parts.append(f"{name!r}: {shown}")
    return "{" + ", ".join(parts) + "}"


class SafeRequest(Request):
    """What a worker tells Flower and its log about a task it received: ids and sizes, never
    the argument values a sender put in the message (a plain Celery client puts the repr of
    every argument there — an `update_provider_config` by name would show its API key)."""

    @property
    def argsrepr(self) -> str:
        return "(" + ", ".join(describe(a) for a in self.args or ()) + ")"

    @property
    def kwargsrepr(self) -> str:
        return safe_kwargs(self.kwargs or {})

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and self.name in PRIVATE_RESULTS:
            fields["result"] = "<in the task record>"
        super().send_event(type, **fields)


class SafeTask(Task):  # type: ignore[type-arg]
    """The base of every aiintegration task (the Celery app's `task_cls`)."""

    Request = "aiintegration.tasks:SafeRequest"  # Celery resolves it by name
