"""PollBatches: ask the provider about every submitted lane batch; once one has ended, apply
each item's outcome to its task through the transitions and error policy of a realtime
attempt (`commands/failures.py`), and send back to the lane what never ran.

Applying is safe to repeat: every change is a transition that requires the task to still run
in this batch (`run_id`), so after a crash the next poll reads the results again and only
the items not applied yet change anything.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from aiintegration.commands.batches import batch_api, checkpoint, live_batches, locked, return_to_lane, start
from aiintegration.commands.context import Context
from aiintegration.commands.failures import handle_failure
from aiintegration.commands.usage import ledger_entry, price, usage_samples
from aiintegration.commands.webhooks import notify_terminal
from aiintegration.domain.batching import COMPLETION_WINDOW_S, round_estimate_s, survives_another_round
from aiintegration.domain.lane_batch import POLLED, BatchStatus, LaneBatch, final_counts
from aiintegration.domain.records import TaskRecord
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import AIIntegrationError, ProviderUnavailable
from aiintegration.providers.base import BatchAPI, BatchOutcome, Generation, ProviderBatch
from aiintegration.store.metrics import Sample, counter

log = logging.getLogger(__name__)
S, B = TaskStatus, BatchStatus
GIVE_UP_AFTER_S = 3600.0  # past the provider's completion window, an unreadable batch's tasks go round again
# What a task that this batch no longer owns has become (it was applied before a crash, or cancelled).
_SINCE: dict[str, str] = {S.SUCCEEDED: "succeeded", S.DEAD_LETTERED: "failed", S.CANCELLED: "discarded"}


@locked("lane_poll")
def poll_batches(ctx: Context) -> dict[str, Any]:
    """PollBatches (beat, every AII_BATCH_INTERVAL_S): each submitted batch's state; an ended
    one's results applied; a batch whose tasks were all cancelled is cancelled at the provider."""
    out: Counter[str] = Counter()
    for batch in live_batches(ctx, POLLED):
        try:
            out[_poll(ctx, batch)] += 1
        except AIIntegrationError as exc:  # the next poll asks again; see _unreadable for how long
            out[_unreadable(ctx, batch, exc)] += 1
    ctx.lane.trim(before=ctx.clock() - ctx.settings.retention_s)
    return dict(out)


def _poll(ctx: Context, batch: LaneBatch) -> str:
    api, provider_id = batch_api(ctx, batch.provider), batch.provider_id
    if api is None or provider_id is None:
        return "no_provider"  # kept until the provider is configured again: its tasks wait
    if not batch.started:  # the worker that submitted it stopped before starting its tasks
        batch = start(ctx, batch)
    found = api.batch_get(provider_id)
    if batch.status == B.SUBMITTED:
        batch = ctx.lane.update(batch, provider_status=found.status, provider_counts=dict(found.counts))
        if not found.ended:
            if not batch.cancel_requested and _all_cancelled(ctx, batch):
                api.batch_cancel(provider_id)
                ctx.lane.update(batch, cancel_requested=True)
                log.info("every task of batch %s was cancelled: cancelled it at %s", batch.id, batch.provider)
                return "cancelled"
            return "in_progress"
        batch = ctx.lane.update(batch, status=B.APPLYING, ended_at=ctx.clock())
    return _apply(ctx, api, batch, found)


def _unreadable(ctx: Context, batch: LaneBatch, exc: AIIntegrationError) -> str:
    """The provider did not answer about a batch (down, or it says there is no such batch).
    Its tasks keep waiting — sending them elsewhere while the batch may still run would pay
    for them twice — until the provider's completion window is long over; then they go round
    again (or to realtime) without it."""
    log.warning("polling batch %s (%s %s) failed: %s", batch.id, batch.provider, batch.provider_id, exc.message)
    batch = ctx.lane.update(batch, error=f"{exc.code}: {exc.message}")
    if ctx.clock() - (batch.submitted_at or batch.created_at) < COMPLETION_WINDOW_S + GIVE_UP_AFTER_S:
        return "unreachable"
    counts: Counter[str] = Counter()
    for record in ctx.tasks.get_many(list(batch.tasks)):
        counts[_send_back(ctx, batch, record, "lost") if record else "discarded"] += 1
    ctx.lane.finish(batch, status=B.ENDED, ended_at=ctx.clock(), counts=final_counts(len(batch.tasks), counts))
    return "given_up"


def _all_cancelled(ctx: Context, batch: LaneBatch) -> bool:
    """No task still runs in the batch: its results would all be discarded."""
    return not any(status == S.RUNNING and run == batch.id for status, run in ctx.lane.owners(batch.tasks))


def _apply(ctx: Context, api: BatchAPI, batch: LaneBatch, found: ProviderBatch) -> str:
    records = {r.id: r for r in ctx.tasks.get_many(list(batch.tasks)) if r is not None}
    counts: Counter[str] = Counter({"discarded": len(batch.tasks) - len(records)})  # records gone meanwhile
    seen: set[str] = set()
    if found.failure:  # refused as a whole after it was created: the tasks try in realtime
        error = ProviderUnavailable(f"{batch.provider} refused the batch: {found.failure}", provider=batch.provider)
        for held in records.values():
            counts[_failed(ctx, batch, held, error, realtime=True)] += 1
    else:
        halfway = max(1, len(records) // 2)
        for outcome in api.batch_results(found):
            record = records.get(outcome.custom_id)
            if record is None or outcome.custom_id in seen:
                continue
            seen.add(outcome.custom_id)
            counts[_apply_one(ctx, batch, record, outcome)] += 1
            if len(seen) == halfway:
                checkpoint(ctx, "applying")
        for task_id, record in records.items():
            if task_id not in seen:  # never answered (a cancelled OpenAI batch lists them nowhere)
                counts[_send_back(ctx, batch, record, "missing")] += 1
    ctx.lane.finish(batch, status=B.ENDED, ended_at=batch.ended_at or ctx.clock(), provider_status=found.status,
                    provider_counts=dict(found.counts), counts=final_counts(len(batch.tasks), counts))
    return "applied"


def _owned(batch: LaneBatch, record: TaskRecord) -> bool:
    return record.status == S.RUNNING and record.run_id == batch.id


def _since(status: str) -> str:
    return _SINCE.get(status, "requeued") if status else "discarded"  # '': the record is gone


def _apply_one(ctx: Context, batch: LaneBatch, record: TaskRecord, outcome: BatchOutcome) -> str:
    if not _owned(batch, record):
        return _since(record.status)
    if outcome.generation is not None:
        return _succeeded(ctx, batch, record, outcome.generation)
    if outcome.error is not None:
        return _failed(ctx, batch, record, outcome.error, realtime=not _survives(ctx, batch, record))
    return _send_back(ctx, batch, record, outcome.unfinished or "missing")


def batch_usage(record: TaskRecord, provider: str, generation: Generation, cost: float,
                saved: float) -> list[Sample]:
    """What a batch answer counts: its tokens and cost labelled `lane="batch"`, and what it
    saved against the realtime price. The seam for the provider-quotas issue: its usage
    ledger counts batch tokens here, against the batch limits, never the realtime ones."""
    samples = usage_samples(generation.usage, cost, provider=provider, task_type=record.task_type, lane="batch")
    if saved:
        samples.append(counter("aii_batch_saved_cost_total", saved, provider=provider))
    return samples


def _succeeded(ctx: Context, batch: LaneBatch, record: TaskRecord, generation: Generation) -> str:
    now = ctx.clock()
    model = generation.model or batch.model
    cost, full = (price(ctx, generation.usage, model=model, provider=batch.provider, batch=lane)
                  for lane in (True, False))
    ledger = ledger_entry(now, generation.usage, tenant=record.tenant, provider=batch.provider, model=model, cost=cost)
    result = {**generation.to_result(), "model": model, "batch": True, "batch_id": batch.provider_id}
    done, before = ctx.tasks.transition(
        record.id, to=S.SUCCEEDED, run_id=batch.id,
        events=[("task.succeeded", {"attempt": record.attempts, "provider": batch.provider, "model": model,
                                    "usage": result.get("usage"), "cost": cost, "batch": True,
                                    "batch_id": batch.provider_id})],
        fields={"result": result, "provider": batch.provider, "finished_at": now, "error": None, "cost": cost,
                "worker_id": ""},
        now=now, metrics=batch_usage(record, batch.provider, generation, cost, round(max(0.0, full - cost), 8)),
        usage=ledger)
    if not done:
        return _since(before)
    notify_terminal(ctx, record)
    return "succeeded"


def _survives(ctx: Context, batch: LaneBatch, record: TaskRecord) -> bool:
    """Whether the task may go round the lane once more before its lane deadline."""
    s, now = ctx.settings, ctx.clock()
    round_s = round_estimate_s(max_wait_s=s.batch_max_wait_s, interval_s=s.batch_interval_s,
                               last_round_s=now - (batch.submitted_at or batch.created_at))
    return survives_another_round(now=now, deadline=record.created_at + s.batch_deadline_s, round_s=round_s)


def _failed(ctx: Context, batch: LaneBatch, record: TaskRecord, error: AIIntegrationError, *, realtime: bool) -> str:
    """The error policy of a realtime attempt: a transient error is retried — in the next
    batch, or in realtime when the lane deadline would not survive another round — and a
    permanent one goes to the DLQ with the provider's message."""
    error.provider = error.provider or batch.provider
    if error.retryable and realtime:
        ctx.tasks.set_fields(record.id, lane="", lane_group="")
    status = handle_failure(ctx, record.with_changes(provider=batch.provider), error, run_id=batch.id)
    if status == S.DEAD_LETTERED:
        return "failed"
    if status == S.RETRYING:
        return "requeued"
    current = ctx.tasks.get(record.id)
    return _since(current.status if current else "")


def _send_back(ctx: Context, batch: LaneBatch, record: TaskRecord, why: str) -> str:
    """An item the batch never answered (expired, canceled, missing) goes round again without
    spending a retry: the next batch, or realtime if its lane deadline would not survive it."""
    if not _owned(batch, record):
        return _since(record.status)
    now = ctx.clock()
    realtime = not _survives(ctx, batch, record)
    fields: dict[str, Any] = {"budget_from": record.budget_from + 1, "worker_id": ""}
    if realtime:
        fields.update(lane="", lane_group="")
    done, before = ctx.tasks.transition(
        record.id, to=S.RETRYING, allowed_from=[S.RUNNING], run_id=batch.id,
        events=[("task.retrying", {"attempt": record.attempts, "delay_s": 0.0, "reason": f"batch_{why}",
                                   "batch_id": batch.provider_id, "lane": "realtime" if realtime else "batch"})],
        fields=fields, retry_at=now, now=now)
    if not done:
        return _since(before)
    if realtime:
        ctx.enqueue(record.id, record.priority, route=record.route)
    else:
        return_to_lane(ctx, record.id)
    return "requeued"
