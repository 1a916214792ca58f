"""ProcessTask: claim a task, choose a provider, call it under a deadline, record the outcome."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiintegration.commands.breaker import breaker_for
from aiintegration.commands.chat import ChatStream, stream_for
from aiintegration.commands.context import Context
from aiintegration.commands.create import router
from aiintegration.commands.failures import handle_failure, mark_timed_out
from aiintegration.commands.runner import Attempt, AttemptRunner
from aiintegration.commands.webhooks import notify_terminal
from aiintegration.domain.pricing import estimate_cost
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import AIIntegrationError, ProviderUnavailable, TaskTimedOut, TransientError
from aiintegration.providers.base import Generation, GenerationRequest, Provider

log = logging.getLogger(__name__)
S = TaskStatus


def runner(ctx: Context) -> AttemptRunner:
    return ctx.once("runner", lambda: AttemptRunner(ctx.tasks, lease_s=ctx.settings.lease_s))


def _call(provider: Provider, request: GenerationRequest, attempt: Attempt, on_delta: Any) -> Generation:
    if on_delta is None:
        return provider.generate(request)
    final: Generation | None = None
    for piece in provider.stream(request, attempt.should_stop):
        if isinstance(piece, Generation):
            final = piece
        else:
            on_delta(piece)
    if final is None:  # the stream was stopped before its end
        raise ProviderUnavailable("the stream ended early", provider=provider.name)
    return final


def process_task(ctx: Context, task_id: str, *, worker_id: str, max_processing_time: float = 300.0,
                 on_delta: Any = None) -> str:
    """Run one attempt of `task_id`. Returns what became of it: the new status, or
    `skipped:<status>` when the message was a duplicate or the task was no longer runnable."""
    claim = ctx.tasks.claim(task_id, worker_id=worker_id, lease_s=ctx.settings.lease_s,
                            max_processing_time=max_processing_time, now=ctx.clock())
    if not claim.claimed:
        return f"skipped:{claim.status or 'missing'}"
    record = claim.record
    run_id = record["run_id"]
    if claim.recovered:
        log.warning("took over a task whose worker stopped heartbeating", extra={"task_id": task_id})
    try:
        provider = router(ctx).choose(record["task_type"], pinned=(record.get("options") or {}).get("provider"))
    except AIIntegrationError as exc:
        return handle_failure(ctx, record, exc, run_id=run_id)
    attempt = Attempt(task_id, run_id, deadline=record["deadline_at"])
    request = GenerationRequest(record["task_type"], record["request_content"],
                                timeout_s=max(0.5, attempt.deadline - time.time()))
    chat = stream_for(ctx, record)
    try:
        return _attempt(ctx, record, provider, request, attempt, chat, chat.delta if chat else on_delta)
    finally:
        if chat:
            chat.close()


def _attempt(ctx: Context, record: dict[str, Any], provider: Provider, request: GenerationRequest,
             attempt: Attempt, chat: ChatStream | None, on_delta: Any) -> str:
    """The provider call of one claimed attempt and what its outcome makes of the task."""
    task_id, run_id = record["id"], attempt.run_id
    breaker = breaker_for(ctx, provider.name)
    started = time.monotonic()
    outcome = runner(ctx).run(attempt, lambda a: _call(provider, request, a, on_delta))
    if chat and (outcome.stopped or outcome.error is not None):
        chat.incomplete(outcome.stopped or type(outcome.error).__name__)
    if outcome.stopped == "timed_out":
        breaker.failure()
        exc = TaskTimedOut(f"attempt {record['attempts']} ran past its deadline", provider=provider.name)
        return mark_timed_out(ctx, record, run_id=run_id, exc=exc) or f"skipped:{outcome.stopped}"
    if outcome.stopped:
        return f"skipped:{outcome.stopped}"
    if outcome.error is not None:
        exc = outcome.error if isinstance(outcome.error, AIIntegrationError) else ProviderUnavailable(
            f"unexpected provider failure: {type(outcome.error).__name__}", provider=provider.name)
        if isinstance(exc, TransientError):
            breaker.failure()
        else:
            breaker.success()  # the provider answered; the request was at fault
        if not isinstance(outcome.error, AIIntegrationError):
            log.error("provider raised outside the error tree", exc_info=outcome.error, extra={"task_id": task_id})
        exc.provider = exc.provider or provider.name
        record["provider"] = provider.name
        return handle_failure(ctx, record, exc, run_id=run_id)
    breaker.success()
    generation = outcome.value
    assert generation is not None
    result = generation.to_result()
    now = ctx.clock()
    call_s = time.monotonic() - started
    labels = f"provider={provider.name},task_type={record['task_type']}"
    metrics = {f"~aii_provider_call_seconds|{labels}": round(call_s, 6),
               f"aii_tokens_total|direction=input,{labels}": generation.usage.input_tokens,
               f"aii_tokens_total|direction=output,{labels}": generation.usage.output_tokens}
    cost = estimate_cost(ctx.settings.prices, model=generation.model, provider=provider.name,
                         input_tokens=generation.usage.input_tokens, output_tokens=generation.usage.output_tokens)
    if cost:
        metrics[f"aii_cost_total|{labels}"] = cost
    done, before = ctx.tasks.transition(
        task_id, to=S.SUCCEEDED, allowed_from=[S.RUNNING], require=("run_id", run_id),
        events=[("task.succeeded", {"attempt": record["attempts"], "provider": provider.name,
                                    "model": generation.model, "usage": result.get("usage"),
                                    "cost": cost, "duration_s": round(call_s, 6)})],
        fields={"result": result, "provider": provider.name, "finished_at": now, "error": None, "cost": cost,
                "worker_id": record.get("worker_id")},
        now=now, metrics=metrics,
    )
    if not done:
        if chat:
            chat.incomplete(f"task is {before}")
        return f"skipped:{before}"
    if chat:
        chat.completed(generation)
    notify_terminal(ctx, record)
    return S.SUCCEEDED
