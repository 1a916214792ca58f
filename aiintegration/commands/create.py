"""CreateGenerationTask: validate, store as `queued`, enqueue, return the id at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from aiintegration.commands.batches import admit, lane_group_for
from aiintegration.commands.context import Context
from aiintegration.commands.tracing import current_trace_context
from aiintegration.commands.usage import reserve_budget
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.routing import Route
from aiintegration.domain.submission import validate_submission
from aiintegration.errors import BudgetExceeded, ValidationError
from aiintegration.store.tasks import Claim, Start

log = logging.getLogger(__name__)


@dataclass
class FirstAttempt:
    """Asks `create_generation_task` to claim a new task's first attempt in the step that
    stores it, for a caller that runs it at once (the task sent by name): one script instead
    of CREATE then CLAIM. `claim` is set when it did (not for a repeat or the batch lane)."""

    start: Start
    claim: Claim | None = None


def create_generation_task(
    ctx: Context,
    *,
    caller: Caller = TRUSTED,
    task_type: Any,
    request_content: Any,
    requested_by: Any,
    priority: Any = 5,
    metadata: Any = None,
    idempotency_key: Any = None,
    options: Any = None,
    chat: tuple[str, str] | None = None,
    task_id: str | None = None,
    enqueue: bool = True,
    first_attempt: FirstAttempt | None = None,
) -> tuple[str, bool]:
    """Returns (task id, created). The task belongs to the caller's tenant. With an idempotency
    key the tenant used in the last 24 h for the same request, returns the first task's id and
    creates nothing (created=False); for a different request, IdempotencyKeyReused.
    `chat` (session id, message id) links an answer to its chat message: SendChatMessage's
    alone, never a caller's. `task_id` names the record (a redelivered message finds it
    instead of creating a second); `enqueue=False` leaves running it to the caller, and
    `first_attempt` has its first attempt claimed for that caller as it is stored."""
    s = ctx.settings
    sub = validate_submission(
        task_type=task_type, request_content=request_content, requested_by=requested_by, priority=priority,
        metadata=metadata, options=options, idempotency_key=idempotency_key,
        default_timeout_s=s.task_timeout_s, max_timeout_s=s.max_task_timeout_s, default_max_retries=s.max_retries,
    )
    sub = replace(sub, tenant=caller.tenant, chat_session_id=chat[0] if chat else None,
                  chat_message_id=chat[1] if chat else None, trace_context=current_trace_context())
    if sub.options.callback_url and not s.webhook_secret:
        # An unsigned webhook cannot be told from a forged one: refuse rather than send it.
        raise ValidationError("webhooks are disabled: the service has no AII_WEBHOOK_SECRET to sign them with",
                              details={"options.callback_url": "refused: AII_WEBHOOK_SECRET is not set"})
    pinned = sub.options.provider
    if pinned and not ctx.router.known(pinned):
        raise ValidationError("unknown provider", details={"options.provider": f"no provider named {pinned!r}"})
    try:
        budget = reserve_budget(ctx, sub)
    except BudgetExceeded:
        # A repeat (a retried request, a redelivered message) gets its first task: a budget spent
        # since then must not turn an accepted request into a 429. Looked up only when refused.
        first = ctx.tasks.existing(sub, task_id=task_id) if sub.idempotency_key or task_id else None
        if first is None:
            raise
        return first, False
    sub = replace(sub, budget=budget, lane_group=lane_group_for(ctx, sub))
    try:
        task_id, created, claim = ctx.tasks.create(sub, task_id=task_id, now=ctx.clock(),
                                                   start=first_attempt.start if first_attempt else None)
    except Exception:
        if sub.budget is not None:  # nothing was stored (a reused key, the store failing): nothing is held
            ctx.usage.release(sub.tenant, sub.budget)
        raise
    if first_attempt is not None:
        first_attempt.claim = claim
    if not created and sub.budget is not None:
        ctx.usage.release(sub.tenant, sub.budget)  # a repeat: the first task holds its own reservation
    if created and sub.lane_group:  # the batch lane: it waits for a batch, no worker runs it
        admit(ctx, task_id, sub.lane_group)
    elif created and enqueue:
        send_created(ctx, task_id, sub.priority, Route(sub.task_type, sub.options.provider))
    return task_id, created


def send_created(ctx: Context, task_id: str, priority: int, route: Route) -> None:
    """The first message of a task just stored. A broker that fails now loses nothing: the
    record is stored, and the pending sweep sends it."""
    try:
        ctx.enqueue(task_id, priority, route=route)
    except Exception:  # noqa: BLE001 - the record is stored; the pending sweep enqueues it
        log.exception("enqueue failed; the pending-task sweep will pick the task up", extra={"task_id": task_id})
