"""ProcessTask: claim a task, choose a provider, call it under a deadline, record the outcome."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aiintegration.commands import quotas
from aiintegration.commands.batches import return_to_lane
from aiintegration.commands.chat import ChatStream, stream_for
from aiintegration.commands.context import Context
from aiintegration.commands.failures import handle_failure, mark_timed_out
from aiintegration.commands.runner import Attempt, OnDelta
from aiintegration.commands.tracing import attempt_span, provider_span, record_failure, record_generation
from aiintegration.commands.usage import ledger_entry, price, usage_samples
from aiintegration.commands.webhooks import notify_terminal
from aiintegration.domain.records import TaskRecord
from aiintegration.domain.routing import Route
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import (
    AIIntegrationError,
    ProviderTimeout,
    ProviderUnavailable,
    StoreUnavailable,
    TaskTimedOut,
    TransientError,
)
from aiintegration.providers.base import Generation, GenerationRequest, Provider
from aiintegration.providers.sending import stamping
from aiintegration.store.metrics import Sample, observation
from aiintegration.store.tasks import Claim

log = logging.getLogger(__name__)
attempt_log = logging.getLogger("aiintegration.attempts")  # one line per attempt outcome
S = TaskStatus
RUNNABLE = frozenset({S.QUEUED, S.RETRYING, S.RUNNING})  # what a claim may take (it decides)


@dataclass
class AttemptReport:
    """What one attempt came to, for its log line and its span."""

    task_id: str
    attempt: int
    task_type: str
    tenant: str
    message_id: str | None  # the Celery message that delivered it (what Flower lists)
    status: str = ""
    provider: str | None = None
    model: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def fields(self) -> dict[str, object]:
        return {"task_id": self.task_id, "attempt": self.attempt, "status": self.status, "provider": self.provider,
                "model": self.model, "task_type": self.task_type, "tenant": self.tenant,
                "duration_s": round(time.monotonic() - self.started, 4), "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost": self.cost, "error": self.error,
                "celery_id": self.message_id}


async def _call(provider: Provider, request: GenerationRequest, attempt: Attempt, *, streaming: bool) -> Generation:
    """The provider call itself, on the runner's event loop: deltas go back to the task's
    thread through `attempt.emit`."""
    if not streaming:
        return await provider.agenerate(request)
    final: Generation | None = None
    async for piece in provider.astream(request, attempt.should_stop):
        if isinstance(piece, Generation):
            final = piece
        else:
            attempt.emit(piece)
    if final is None:  # the stream was stopped before its end
        raise ProviderUnavailable("the stream ended early", provider=provider.name)
    return final


@dataclass
class AttemptPlan:
    """What an attempt will do once it holds the task: its provider (or why there is none)
    and its quota ticket."""

    provider: Provider | None
    choice: AIIntegrationError | None = None  # the claimed attempt fails with it (a retry, or the DLQ)
    ticket: quotas.Ticket | None = None


def _choose(ctx: Context, route: Route) -> AttemptPlan:
    try:
        return AttemptPlan(ctx.router.choose(route.task_type, pinned=route.pinned))
    except AIIntegrationError as exc:
        return AttemptPlan(None, exc)


def route_plan(ctx: Context, route: Route) -> AttemptPlan | None:
    """The plan of an attempt that needs nothing of its record (see `_unread_plan`), for a
    caller that claims the attempt as it creates the task; None: it must be planned after."""
    plan = _unread_plan(ctx, route)
    return plan if plan is not None and plan.provider is not None else None


def _unread_plan(ctx: Context, route: Route) -> AttemptPlan | None:
    """The plan when the attempt needs nothing of the record before its claim: the provider
    follows from the route, and its quota has no limit to ask (or quotas are off). None: the
    record must be read first (its request is what the quota reserves for)."""
    plan = _choose(ctx, route)
    if plan.provider is None or not ctx.settings.quotas:
        return plan
    plan.ticket = quotas.unmetered(ctx, plan.provider)
    return plan if plan.ticket is not None else None


def _read_plan(ctx: Context, seen: TaskRecord) -> AttemptPlan | str:
    """The plan from the record as read before the claim: the provider, and a reservation in
    its quota; or what became of the task instead (throttled: no room in the quota yet)."""
    plan = _choose(ctx, Route(seen.task_type, seen.pinned_provider))
    if plan.provider is not None and ctx.settings.quotas:
        request = GenerationRequest(seen.task_type, seen.request_content, timeout_s=seen.timeout_s)
        plan.provider, answer = quotas.admit(ctx, seen, plan.provider, request)
        if isinstance(answer, quotas.Refusal):
            return quotas.throttle(ctx, seen, answer)
        plan.ticket = answer
    return plan


def _writer(on_delta: OnDelta) -> OnDelta:
    def write(text: str) -> None:
        try:
            on_delta(text)
        except Exception as exc:  # noqa: BLE001 - writing the delta is ours, not the provider's, to fail
            raise StoreUnavailable(f"could not write the answer's events: {type(exc).__name__}") from exc
    return write


def process_task(ctx: Context, task_id: str, *, worker_id: str, max_processing_time: float = 300.0,
                 on_delta: OnDelta | None = None, message_id: str | None = None, route: Route | None = None,
                 claimed: tuple[AttemptPlan, Claim] | None = None) -> str:
    """Run one attempt of `task_id`. Returns what became of it: the new status, or
    `skipped:<status>` when the message was a duplicate or the task was no longer runnable.
    Every attempt that ran leaves one log line (`aiintegration.attempts`) and one span.

    The provider is chosen, and its quota asked for, before the claim: a task the provider's
    bucket cannot take yet is `throttled` (its status unchanged, its message back later), so
    a wait for quota is never an attempt, a failure or a retry. With the task's `route` (its
    message carries it) and a provider whose quota has no limit, there is nothing to ask: the
    claim is the attempt's first round trip, and the record is read by it (a record on
    another route than the message's is read and planned for as usual). `claimed`: the
    attempt was planned by `route_plan` and claimed by the step that created the task."""
    plan: AttemptPlan | None
    claim: Claim | None
    if claimed is not None:
        plan, claim = claimed
    else:
        plan, claim = (_unread_plan(ctx, route) if route is not None else None), None
        if plan is not None:
            claim = _claim(ctx, task_id, plan, worker_id, max_processing_time, route)
            if claim.off_route:
                plan = claim = None
    if plan is None:
        seen = ctx.tasks.get(task_id)
        if seen is None or seen.status not in RUNNABLE:
            return f"skipped:{seen.status if seen else 'missing'}"
        if seen.lane:  # a batch-lane task is never run here (nor asks for realtime quota): it waits for a batch
            return return_to_lane(ctx, task_id, known=seen)
        read = _read_plan(ctx, seen)
        if isinstance(read, str):
            return read
        plan = read
    if claim is None:
        claim = _claim(ctx, task_id, plan, worker_id, max_processing_time, None)
    if not claim.claimed or claim.record is None:
        if plan.ticket is not None:
            quotas.give_back(ctx, plan.ticket)
        if claim.lane:  # a batch-lane task is never run here: it waits for its next batch
            return return_to_lane(ctx, task_id)
        return f"skipped:{claim.status or 'missing'}"
    record = claim.record
    if claim.recovered:
        log.warning("took over a task whose worker stopped heartbeating", extra={"task_id": task_id})
    report = AttemptReport(task_id, record.attempts, record.task_type, record.tenant, message_id)
    with attempt_span(record) as span:
        if plan.provider is None or plan.choice is not None:
            report.error = plan.choice.code if plan.choice else "no_provider"
            report.status = handle_failure(ctx, record, plan.choice or ProviderUnavailable("no provider"),
                                           run_id=record.run_id)
        else:
            report.status = _claimed(ctx, record, plan.provider, plan.ticket, report, on_delta)
        span.set_attribute("aiintegration.outcome", report.status)
    attempt_log.info("attempt %s of %s: %s", report.attempt, task_id, report.status,
                     extra={"task_id": task_id, "attempt": report.attempt, "provider": report.provider,
                            "fields": report.fields()})
    return report.status


def _claim(ctx: Context, task_id: str, plan: AttemptPlan, worker_id: str, max_processing_time: float,
           route: Route | None) -> Claim:
    return ctx.tasks.claim(task_id, worker_id=worker_id, lease_s=ctx.settings.lease_s,
                           max_processing_time=max_processing_time,
                           provider=plan.provider.name if plan.provider else "", route=route, now=ctx.clock())


def _claimed(ctx: Context, record: TaskRecord, provider: Provider, ticket: quotas.Ticket | None,
             report: AttemptReport, on_delta: OnDelta | None) -> str:
    run_id = record.run_id
    report.provider = provider.name
    attempt = Attempt(record.id, run_id or "", deadline=record.deadline_at or time.time())
    request = GenerationRequest(record.task_type, record.request_content,
                                timeout_s=max(0.5, attempt.deadline - time.time()))
    report.model = provider.model_for(request)
    chat = stream_for(ctx, record)
    try:
        return _attempt(ctx, record, provider, request, attempt, chat, chat.delta if chat else on_delta, report,
                        ticket)
    finally:
        if chat:
            chat.close()


def _provider_at_fault(error: AIIntegrationError | None, request: GenerationRequest, provider: Provider) -> bool | None:
    """What an attempt's outcome says about the provider, for its circuit breaker: True (its
    failure: 5xx, 429, connection errors, no answer within its own configured timeout), False
    (it answered: a success, or a request it rightly refused), None (not the provider's doing:
    the caller's deadline was shorter than the provider's timeout, or our own store failed)."""
    if error is None:
        return False
    if isinstance(error, StoreUnavailable):
        return None
    if isinstance(error, ProviderTimeout | TaskTimedOut):
        return request.timeout_s >= provider.config.timeout_s
    return isinstance(error, TransientError)  # a permanent error: it answered, the request was at fault


def _report(ctx: Context, provider: Provider, at_fault: bool | None) -> None:
    if at_fault is True:
        ctx.breakers[provider.name].failure()
    elif at_fault is False:
        ctx.breakers[provider.name].success()


def _attempt(ctx: Context, record: TaskRecord, provider: Provider, request: GenerationRequest,
             attempt: Attempt, chat: ChatStream | None, on_delta: OnDelta | None, report: AttemptReport,
             ticket: quotas.Ticket | None) -> str:
    """The provider call of one claimed attempt and what its outcome makes of the task."""
    task_id, run_id = record.id, attempt.run_id
    started, sent_at = time.monotonic(), [time.time()]

    async def call(a: Attempt) -> Generation:
        # What the quota counts from: when the request's headers go out (providers/sending.py),
        # or now for a provider that sends no HTTP request.
        sent_at[0] = time.time()
        with stamping(sent_at):
            return await _call(provider, request, a, streaming=on_delta is not None)

    with provider_span(provider, request) as span:
        outcome = ctx.runner.run(attempt, call, _writer(on_delta) if on_delta else None)
        if outcome.value is not None:
            record_generation(span, outcome.value)
        elif outcome.stopped or outcome.error is not None:
            kind = outcome.stopped or (outcome.error.code if isinstance(outcome.error, AIIntegrationError)
                                       else type(outcome.error).__name__)
            record_failure(span, kind)
            report.error = kind
    if ticket is not None:
        quotas.settle(ctx, ticket, outcome.value, outcome.error, sent_at=sent_at[0])
    if chat and (outcome.stopped or outcome.error is not None):
        chat.incomplete(outcome.stopped or type(outcome.error).__name__)
    if outcome.stopped == "timed_out":
        exc = TaskTimedOut(f"attempt {record.attempts} ran past its deadline", provider=provider.name)
        _report(ctx, provider, _provider_at_fault(exc, request, provider))
        return mark_timed_out(ctx, record, run_id=run_id, exc=exc) or f"skipped:{outcome.stopped}"
    if outcome.stopped:
        return f"skipped:{outcome.stopped}"
    if outcome.error is not None:
        error = outcome.error if isinstance(outcome.error, AIIntegrationError) else ProviderUnavailable(
            f"unexpected provider failure: {type(outcome.error).__name__}", provider=provider.name)
        _report(ctx, provider, _provider_at_fault(error, request, provider))
        if not isinstance(outcome.error, AIIntegrationError):
            log.error("provider raised outside the error tree", exc_info=outcome.error, extra={"task_id": task_id})
        error.provider = error.provider or provider.name
        return handle_failure(ctx, record.with_changes(provider=provider.name), error, run_id=run_id)
    _report(ctx, provider, False)
    generation = outcome.value
    if generation is None:  # the runner returns a value whenever it reports no error and no stop
        raise RuntimeError("an attempt finished without a result")
    report.model, report.input_tokens, report.output_tokens = (generation.model, generation.usage.input_tokens,
                                                               generation.usage.output_tokens)
    return _succeeded(ctx, record, provider, generation, chat, call_s=time.monotonic() - started, run_id=run_id,
                      report=report)


def _succeeded(ctx: Context, record: TaskRecord, provider: Provider, generation: Generation,
               chat: ChatStream | None, *, call_s: float, run_id: str, report: AttemptReport) -> str:
    result = generation.to_result()
    now = ctx.clock()
    labels = {"provider": provider.name, "task_type": record.task_type}
    cost = price(ctx, generation.usage, model=generation.model, provider=provider.name)
    metrics: list[Sample] = [observation("aii_provider_call_seconds", round(call_s, 6), **labels),
                             *usage_samples(generation.usage, cost, **labels)]
    report.cost = cost
    ledger = ledger_entry(now, generation.usage, tenant=record.tenant, provider=provider.name, model=generation.model,
                          cost=cost)
    done, before = ctx.tasks.transition(
        record.id, to=S.SUCCEEDED, run_id=run_id,
        events=[("task.succeeded", {"attempt": record.attempts, "provider": provider.name,
                                    "model": generation.model, "usage": result.get("usage"),
                                    "cost": cost, "duration_s": round(call_s, 6)})],
        fields={"result": result, "provider": provider.name, "finished_at": now, "error": None, "cost": cost,
                "worker_id": record.worker_id},
        now=now, metrics=metrics, usage=ledger,
    )
    if not done:
        if chat:
            chat.incomplete(f"task is {before}")
        return f"skipped:{before}"
    if chat:
        chat.completed(generation)
    notify_terminal(ctx, record)
    return S.SUCCEEDED
