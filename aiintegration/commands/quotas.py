"""Admission, not rejection: before an attempt calls a provider it reserves a request and its
estimated tokens in that provider's shared bucket (store/quotas.py). When the bucket cannot
cover it the attempt is not made and not counted: the task stays where it was (queued or
retrying), emits `task.throttled`, and its message comes back when the bucket can cover it
— or the attempt moves to another capable provider with room when the first has none for
longer than the task can wait. After the call the reservation is settled to the real usage
and the provider's rate-limit headers are learned; a 429 pauses the bucket for everyone."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from aiintegration.commands.context import Context
from aiintegration.domain.quotas import RateLimits, ask_again_after
from aiintegration.domain.records import TaskRecord, iso
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import RateLimited
from aiintegration.providers.base import Generation, GenerationRequest, Provider
from aiintegration.store.metrics import counter
from aiintegration.store.quotas import Admission

log = logging.getLogger(__name__)
DEFAULT_PAUSE_S = 1.0  # a 429 without Retry-After


@dataclass(frozen=True)
class Ticket:
    """An admitted attempt's reservation."""

    provider: str
    bucket: str
    limits: RateLimits
    reservation: str  # '' when the bucket has no limit: nothing was reserved (only the answer is learned)
    prompt_estimate: int  # what the prompt was estimated at (a failed call is settled to it)
    own: tuple[int | None, int | None] = (None, None)  # our reservations when admitted (store/quotas.py LEARN)


@dataclass(frozen=True)
class Refusal:
    provider: str
    bucket: str
    admission: Admission


def _estimate(request: GenerationRequest) -> tuple[int, int]:
    """(prompt + all the output it may produce, prompt alone)."""
    prompt = request.estimated_prompt_tokens()
    return prompt + request.max_tokens, prompt


def unmetered(ctx: Context, provider: Provider) -> Ticket | None:
    """A ticket that reserves nothing when no attempt on `provider` has a limit to respect
    (none configured for it or its models, none learned, no pause), so the attempt need not
    ask; None when it must."""
    limits = provider.config.rate_limits
    if limits.models or not ctx.quotas.unlimited(provider.name, "*", limits.default):
        return None
    return Ticket(provider.name, "*", limits.default, "", 0)


def _ask(ctx: Context, record: TaskRecord, provider: Provider, request: GenerationRequest) -> Ticket | Refusal:
    bucket, limits = provider.config.rate_limits.bucket(provider.model_for(request))
    estimate, prompt = _estimate(request)
    if ctx.quotas.unlimited(provider.name, bucket, limits):  # ADMIT would admit it without counting
        return Ticket(provider.name, bucket, limits, "", prompt)
    reservation = f"{record.id}.{record.attempts + 1}.{uuid.uuid4().hex[:8]}"
    admission = ctx.quotas.admit(provider.name, bucket, limits, waiter=record.id, reservation=reservation,
                                 priority=record.priority, tenant=record.tenant,
                                 weight=ctx.settings.tenant_weights.get(record.tenant, 1.0), tokens=estimate)
    if admission.admitted:
        return Ticket(provider.name, bucket, limits, reservation, prompt,
                      own=(admission.own_requests, admission.own_tokens))
    return Refusal(provider.name, bucket, admission)


def admit(ctx: Context, record: TaskRecord, provider: Provider,
          request: GenerationRequest) -> tuple[Provider, Ticket | Refusal]:
    """A reservation for this attempt on `provider`, or on another capable one with room when
    `provider` has none for longer than the task can wait (an unpinned task only)."""
    answer = _ask(ctx, record, provider, request)
    if isinstance(answer, Ticket) or record.pinned_provider or answer.admission.wait_s <= record.timeout_s:
        return provider, answer
    for other in ctx.router.alternatives(record.task_type, excluding=provider.name):
        moved = _ask(ctx, record, other, request)
        if isinstance(moved, Ticket):
            ctx.quotas.leave(provider.name, bucket_of(provider, request), record.id)
            log.info("no room at %s for %.1fs: the attempt goes to %s", provider.name, answer.admission.wait_s,
                     other.name, extra={"task_id": record.id})
            return other, moved
        ctx.quotas.leave(other.name, bucket_of(other, request), record.id)
    return provider, answer


def bucket_of(provider: Provider, request: GenerationRequest) -> str:
    return provider.config.rate_limits.bucket(provider.model_for(request))[0]


def throttle(ctx: Context, record: TaskRecord, refusal: Refusal) -> str:
    """Not admitted: the task keeps its status, says why, and its message comes back when the
    bucket can cover it, or sooner to ask again (`ask_again_after`)."""
    wait = refusal.admission.wait_s
    now = ctx.clock()
    ctx.tasks.note(record.id, "task.throttled", {"provider": refusal.provider, "until": iso(now + wait),
                                                 "reason": refusal.admission.reason},
                   metrics=[counter("aii_throttled_total", 1, provider=refusal.provider,
                                    reason=refusal.admission.reason.removesuffix("_queued"))],
                   fields={"throttled_in": f"{refusal.provider}|{refusal.bucket}"},
                   first={"throttled_at": now}, now=now)
    countdown = ask_again_after(wait, cap_s=ctx.settings.quota_max_countdown_s,
                                ceiling_s=ctx.settings.visibility_timeout_s / 2)
    if countdown > ctx.settings.quota_max_countdown_s:
        # Far back in a deep line: it sleeps in Redis (the deferred sweep sends its message),
        # not as an ETA message in a worker's memory.
        ctx.tasks.defer(record.id, until=now + countdown)
    else:
        ctx.enqueue(record.id, record.priority, countdown, attempt=record.attempts + 1, route=record.route)
        if record.status == TaskStatus.RETRYING:  # its message is out: not due for the pending sweep before
            ctx.tasks.retry_resent(record.id, now=now + countdown)
    return "throttled"


def give_back(ctx: Context, ticket: Ticket) -> None:
    if ticket.reservation:
        ctx.quotas.give_back(ticket.provider, ticket.bucket, ticket.reservation)


def settle(ctx: Context, ticket: Ticket, generation: Generation | None, error: BaseException | None, *,
           sent_at: float) -> None:
    """The reservation becomes the real usage counted from when the request was sent (the
    prompt estimate when the call failed; nothing for a 429, which the provider did not count),
    what the provider said is learned, and a 429 pauses the bucket for everyone until its
    Retry-After."""
    try:
        tokens: int | None  # None: given back whole
        if generation is not None:
            tokens = generation.usage.input_tokens + generation.usage.output_tokens
        else:
            tokens = None if isinstance(error, RateLimited) else ticket.prompt_estimate
        pause = (error.retry_after or DEFAULT_PAUSE_S) if isinstance(error, RateLimited) else None
        ctx.quotas.after_call(ticket.provider, ticket.bucket, ticket.limits, ticket.reservation, tokens,
                              sent_at=sent_at, info=generation.rate_limits if generation is not None else None,
                              pause_s=pause, own=ticket.own)
    except Exception:  # noqa: BLE001 - quota bookkeeping must not fail a finished attempt
        log.warning("could not settle a quota reservation", exc_info=True)
