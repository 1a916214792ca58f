"""The task-lifecycle commands as Celery tasks (names are a stable contract)."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task, states

from aiintegration.commands import lifecycle
from aiintegration.commands.context import get_context
from aiintegration.commands.create import FirstAttempt
from aiintegration.commands.create import create_generation_task as create
from aiintegration.commands.process import process_task as process
from aiintegration.commands.process import route_plan
from aiintegration.domain.auth import trusted
from aiintegration.domain.routing import Route
from aiintegration.store.tasks import Start
from aiintegration.tasks import CALLER_ERRORS, current_worker_id, error_result, policy


@shared_task(name="aiintegration.create_generation_task", bind=True, **policy(answered=True, infra_retry=True))
def create_generation_task(self: Task[Any, Any], /, task_type: str, request_content: dict[str, Any], requested_by: str,
                           priority: int = 5, metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
                           options: dict[str, Any] | None = None, tenant: str | None = None) -> dict[str, Any]:
    """Returns {"ok": true, "id", "created"} or {"ok": false, "error"} for invalid input.
    Callers with broker access are trusted: they name their tenant (default `celery`).

    One broker hop, like a submission over REST: the record is named after this message, the
    reply is stored at once (a caller waiting on it has it now), and the first attempt runs
    right here instead of in a second `process_task` message. A redelivered message (its
    worker died) finds its record and carries the attempt on; retries go as usual."""
    ctx = get_context()
    record_id = record_id_for(self.request.id)
    worker_id, limit = current_worker_id(self), ctx.settings.max_task_timeout_s
    pinned = options.get("provider") if isinstance(options, dict) else None  # validated by create()
    route = Route(str(task_type), pinned if isinstance(pinned, str) else None)
    # Its provider follows from the message and has no quota to ask: the record is stored
    # with its first attempt claimed (one script); else the attempt is planned after.
    plan = route_plan(ctx, route)
    first = FirstAttempt(Start(worker_id, ctx.settings.lease_s, limit)) if plan is not None else None
    try:
        task_id, created = create(ctx, caller=trusted(tenant), task_type=task_type, request_content=request_content,
                                  requested_by=requested_by, priority=priority, metadata=metadata,
                                  idempotency_key=idempotency_key, options=options, task_id=record_id, enqueue=False,
                                  first_attempt=first)
    except CALLER_ERRORS as exc:
        return error_result(exc)
    reply = {"ok": True, "id": task_id, "created": created}
    if task_id == record_id:  # ours (not another task an idempotency key named): run its first attempt here
        if self.request.id and not self.request.ignore_result:
            self.backend.store_result(self.request.id, reply, states.SUCCESS)
            # Stored: Celery's own store after the return would only read it back and keep it.
            self.request.ignore_result = True
        claimed = (plan, first.claim) if plan is not None and first is not None and first.claim is not None else None
        process(ctx, task_id, worker_id=worker_id, max_processing_time=limit, message_id=f"{task_id}.1", route=route,
                claimed=claimed)
    return reply


def record_id_for(message_id: str | None) -> str:
    """The record a create message names: its own id when that is a UUID (a plain Celery
    client's), else a UUID derived from it; a fresh one for a message without an id."""
    if not message_id:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(message_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aiintegration:{message_id}"))


@shared_task(name="aiintegration.process_task", bind=True, **policy(answered=False, infra_retry=True))
def process_task(self: Task[Any, Any], /, task_id: str, worker_id: str | None = None,
                 max_processing_time: float | None = None, task_type: str | None = None,
                 pinned_provider: str | None = None, **_: Any) -> str:
    """One attempt. max_processing_time caps the task's own `timeout_s` (default: that timeout);
    `task_type` and `pinned_provider`, the task's route, let it choose before reading the record."""
    ctx = get_context()
    cap = ctx.settings.max_task_timeout_s
    limit = min(float(max_processing_time), cap) if max_processing_time else cap
    route = Route(str(task_type), str(pinned_provider) if pinned_provider else None) if task_type else None
    return process(ctx, task_id, worker_id=worker_id or current_worker_id(self), max_processing_time=limit,
                   message_id=self.request.id, route=route)


@shared_task(name="aiintegration.retry_task", **policy(answered=True, infra_retry=True))
def retry_task(task_id: str, retry_reason: str, delay: float | None = None) -> dict[str, Any]:
    try:
        return {"ok": True, "task": lifecycle.retry_task(get_context(), task_id, retry_reason, delay).public()}
    except CALLER_ERRORS as exc:
        return error_result(exc)


@shared_task(name="aiintegration.cancel_task", **policy(answered=True, infra_retry=True))
def cancel_task(task_id: str, cancellation_reason: str) -> dict[str, Any]:
    try:
        return {"ok": True, "task": lifecycle.cancel_task(get_context(), task_id, cancellation_reason).public()}
    except CALLER_ERRORS as exc:
        return error_result(exc)
