"""What happens after an attempt fails: retry with backoff, or the dead-letter queue.

`dead_letter()` is the one exit to the DLQ; `schedule_retry()` the one place a retry
delay is chosen.
"""

from __future__ import annotations

import logging
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.webhooks import notify_terminal
from aiintegration.domain.backoff import compute_backoff
from aiintegration.domain.records import TaskRecord, iso
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import AIIntegrationError, TransientError

log = logging.getLogger(__name__)
S = TaskStatus


def dead_letter(ctx: Context, record: TaskRecord, error: dict[str, Any], *, from_status: TaskStatus,
                run_id: str | None = None, reason: str = "permanent_error") -> bool:
    """Move a task to the DLQ with `task.failed` and `task.dead_lettered`, atomically."""
    now = ctx.clock()
    entry: dict[str, Any] = {
        "task_id": record.id, "task_type": record.task_type, "tenant": record.tenant,
        "requested_by": record.requested_by,
        "provider": error.get("provider") or record.provider, "error": error,
        "attempts": record.attempts, "dead_lettered_at": iso(now), "reason": reason,
        "review_state": "pending", "auto_retries": record.auto_retries, "notes": [],
    }
    done, _ = ctx.tasks.transition(
        record.id, to=S.DEAD_LETTERED, allowed_from=[from_status], run_id=run_id,
        events=[("task.failed", {"attempt": record.attempts, "error": error}),
                ("task.dead_lettered", {"reason": reason, "error_class": error.get("class")})],
        fields={"error": error, "finished_at": now, "worker_id": ""}, dlq_entry=entry, now=now,
    )
    if done:
        log.warning("dead-lettered (%s): %s: %s", reason, error.get("code"), error.get("message"),
                    extra={"task_id": record.id, "provider": error.get("provider")})
        notify_terminal(ctx, record)
    return done


def schedule_retry(ctx: Context, record: TaskRecord, error: dict[str, Any], *, from_status: TaskStatus,
                   run_id: str | None, retry_after: float | None = None) -> bool:
    """`retrying` now, a process_task message after the backoff delay."""
    s = ctx.settings
    delay = compute_backoff(record.attempts - record.budget_from, base_s=s.backoff_base_s, max_s=s.backoff_max_s,
                            retry_after_s=retry_after, retry_after_max_s=s.retry_after_max_s)
    now = ctx.clock()
    done, _ = ctx.tasks.transition(
        record.id, to=S.RETRYING, allowed_from=[from_status], run_id=run_id,
        events=[("task.retrying", {"attempt": record.attempts, "delay_s": delay,
                                   "reason": error.get("code"), "error": error})],
        fields={"error": error, "worker_id": ""}, retry_at=now + delay, now=now,
    )
    if done:
        log.info("retry in %.2fs after %s: %s", delay, error.get("code"), error.get("message"),
                 extra={"task_id": record.id, "provider": error.get("provider")})
        try:
            ctx.enqueue(record.id, record.priority, delay, attempt=record.attempts + 1, route=record.route)
        except Exception:  # noqa: BLE001 - the retry index lets the pending sweep recover it
            log.exception("could not enqueue retry", extra={"task_id": record.id})
    return done


def handle_failure(ctx: Context, record: TaskRecord, exc: AIIntegrationError, *, run_id: str | None,
                   from_status: TaskStatus = S.RUNNING) -> str:
    """Apply the error policy to a failed attempt; returns the new status (or '' if the
    task had already moved on, e.g. cancelled)."""
    error = exc.to_dict()
    if exc.retryable and record.retries_left > 0:
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        ok = schedule_retry(ctx, record, error, from_status=from_status, run_id=run_id, retry_after=retry_after)
        return S.RETRYING if ok else ""
    reason = "retries_exhausted" if exc.retryable else "permanent_error"
    return S.DEAD_LETTERED if dead_letter(ctx, record, error, from_status=from_status, run_id=run_id,
                                          reason=reason) else ""


def mark_timed_out(ctx: Context, record: TaskRecord, *, run_id: str | None, exc: AIIntegrationError) -> str:
    """running → timed_out (with its event), then retry if allowed, else the DLQ."""
    now = ctx.clock()
    done, _ = ctx.tasks.transition(
        record.id, to=S.TIMED_OUT, run_id=run_id,
        events=[("task.timed_out", {"attempt": record.attempts, "deadline_at": iso(record.deadline_at)})],
        fields={"error": exc.to_dict(), "worker_id": ""}, now=now,
    )
    if not done:
        return ""
    if not record.options.retry_on_timeout:
        return S.DEAD_LETTERED if dead_letter(ctx, record, exc.to_dict(), from_status=S.TIMED_OUT,
                                              reason="timed_out") else ""
    return handle_failure(ctx, record, exc, run_id=None, from_status=S.TIMED_OUT)
