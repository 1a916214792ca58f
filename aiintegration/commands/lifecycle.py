"""CancelTask and RetryTask, and the look-ups the API, the tasks and the CLI share. A caller
sees only what its tenant owns unless it is an operator: another tenant's task is answered
exactly like an unknown one."""

from __future__ import annotations

from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.webhooks import notify_terminal
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.limits import DEFAULT_PAGE, MAX_REASON, MAX_RETRY_DELAY_S
from aiintegration.domain.records import TaskRecord
from aiintegration.domain.states import CANCELLABLE, RETRYABLE_BY_HAND, TaskStatus
from aiintegration.domain.submission import is_number
from aiintegration.errors import Conflict, NotFound, ValidationError

S = TaskStatus


def get_task(ctx: Context, task_id: str, caller: Caller = TRUSTED) -> TaskRecord:
    record = ctx.tasks.get(task_id)
    if record is None or not caller.sees(record.tenant):
        raise NotFound(f"no task {task_id}")
    return record


def list_tasks(ctx: Context, caller: Caller = TRUSTED, *, tenant: str | None = None, status: str | None = None,
               requested_by: str | None = None, limit: int = DEFAULT_PAGE,
               cursor: str | None = None) -> tuple[list[TaskRecord], str | None]:
    """Newest first, filtered; a client lists its own tenant's tasks, an operator every
    tenant's (or one's, with `tenant`). The cursor continues a listing."""
    if tenant is not None:
        caller.require_operator("listing another tenant's tasks")
    elif not caller.is_operator:
        tenant = caller.tenant
    return ctx.tasks.list(tenant=tenant, status=status, requested_by=requested_by, limit=limit, cursor=cursor)


def task_counts(ctx: Context) -> dict[str, int]:
    return ctx.tasks.counts()


def reason_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON:
        raise ValidationError(f"{field} is required",
                              details={field: f"a non-empty string of at most {MAX_REASON} characters"})
    return value.strip()


def cancel_task(ctx: Context, task_id: str, cancellation_reason: Any, caller: Caller = TRUSTED) -> TaskRecord:
    """Queued or retrying: cancelled at once, its message dropped when pulled. Running: the
    status flips now and the worker abandons the call within one heartbeat (its result is
    discarded, so a cancelled task never becomes succeeded). Terminal: Conflict."""
    reason = reason_text(cancellation_reason, "cancellation_reason")
    record = get_task(ctx, task_id, caller)
    now = ctx.clock()
    done, before = ctx.tasks.transition(
        task_id, to=S.CANCELLED, allowed_from=CANCELLABLE,
        events=[("task.cancelled", {"reason": reason, "was": record.status})],
        fields={"finished_at": now, "cancel_reason": reason}, now=now,
    )
    if not done:
        if not before:
            raise NotFound(f"no task {task_id}")
        raise Conflict(f"task is {before} and can no longer be cancelled", details={"status": before})
    notify_terminal(ctx, record)
    return get_task(ctx, task_id)


def retry_task(ctx: Context, task_id: str, retry_reason: Any, delay: Any = None,
               caller: Caller = TRUSTED) -> TaskRecord:
    """Manually retry a dead-lettered (or timed-out, or waiting) task under its same id, with a
    fresh automatic-retry budget. `delay` (seconds) waits before it runs."""
    reason = reason_text(retry_reason, "retry_reason")
    if delay is not None and not (is_number(delay) and 0 <= delay <= MAX_RETRY_DELAY_S):
        raise ValidationError("invalid delay", details={"delay": f"seconds from 0 to {MAX_RETRY_DELAY_S:g}"})
    record = get_task(ctx, task_id, caller)
    if record.status not in RETRYABLE_BY_HAND:
        raise Conflict(f"task is {record.status}; only {', '.join(sorted(RETRYABLE_BY_HAND))} tasks can be retried",
                       details={"status": record.status})
    now = ctx.clock()
    wait = float(delay) if delay else None
    done, before = ctx.tasks.transition(
        task_id, to=S.RETRYING if wait else S.QUEUED, allowed_from=RETRYABLE_BY_HAND,
        events=[("task.retrying", {"attempt": record.attempts, "delay_s": wait or 0.0, "reason": reason,
                                   "manual": True})],
        fields={"budget_from": record.attempts, "finished_at": None, "enqueued_at": now},
        retry_at=now + wait if wait else None, now=now,
    )
    if not done:
        raise Conflict(f"task is {before} and cannot be retried now", details={"status": before})
    if record.status == S.DEAD_LETTERED:
        ctx.dlq.remove(task_id)
    ctx.enqueue(task_id, record.priority, wait, attempt=record.attempts + 1, route=record.route)
    return get_task(ctx, task_id)
