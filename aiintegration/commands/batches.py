"""The batch lane (SPEC §5): deferrable text and chat tasks wait per provider and model; beat
submits them as one provider batch (OpenAI's Batch API, Anthropic's Message Batches: half the
price), polls it, and applies its results (`commands/batch_results.py`) through the same
transitions and error policy as a realtime attempt.

Crash safety. Our `LaneBatch` record is written before each external step and says which
step was under way; the next run reconciles before it repeats anything:

- `preparing`: its tasks left the lane (each one's `batch_ref` names the batch, so no other
  batch can take it); nothing billable was sent. Resumed: uploaded and submitted again.
- `submitting`: the create call may have reached the provider. The provider is asked first
  (`BatchAPI.batch_find`: OpenAI by our id in the batch's metadata; Anthropic, which keeps
  none, by the one batch created since the intent that is not ours and holds as many
  requests) and the batch adopted if found, else submitted again. One unresolved submission
  per provider at a time keeps that answer unambiguous.
- `submitted`: the provider has it and its tasks run (`run_id` = our batch id).
- `applying`: it ended; results are applied from the start again after a crash — a result
  already applied no longer matches its task's run and is skipped by the transition.

So a task is in at most one provider batch at a time, is billed once, and reaches exactly one
terminal state. A worker never runs a lane task: the claim hands it back here (`return_to_lane`).
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import wraps
from typing import Any, TypeGuard

from aiintegration.commands.context import Context
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.batching import (
    COMPLETION_WINDOW_S,
    LANE,
    BatchLimits,
    batch_enabled,
    cut,
    group_name,
    is_due,
    limits_for,
    split_group,
    wants_lane,
)
from aiintegration.domain.lane_batch import UNSENT, BatchStatus, LaneBatch
from aiintegration.domain.limits import DEFAULT_PAGE
from aiintegration.domain.records import TaskOptions, TaskRecord, encode_field
from aiintegration.domain.routing import Route
from aiintegration.domain.states import TaskStatus
from aiintegration.domain.submission import Submission, json_size
from aiintegration.errors import AIIntegrationError, PermanentError, TransientError
from aiintegration.providers.base import CLOCK_SLACK_S, BatchAPI, BatchRequest, GenerationRequest, ProviderBatch

log = logging.getLogger(__name__)
S, B = TaskStatus, BatchStatus
MAX_BATCHES_PER_RUN = 50  # per group and beat run: bounded work, the rest go next run
Run = Callable[..., dict[str, Any]]


# -- choosing the lane and waiting in it --------------------------------------------------------
def lane_group_for(ctx: Context, sub: Submission) -> str | None:
    """The provider|model a new task waits for in the lane, or None: it runs in realtime
    (no `options.batch` and no policy match, an image or a chat answer, or a provider with
    no batch API)."""
    s = ctx.settings
    if not wants_lane(sub.options.batch, s.batch_policy, task_type=sub.task_type, priority=sub.priority,
                      timeout_s=sub.options.timeout_s, requested_by=sub.requested_by,
                      chat=sub.chat_session_id is not None):
        return None
    return _group_for(ctx, sub.task_type, sub.request_content, timeout_s=sub.options.timeout_s,
                      pinned=sub.options.provider)


def _group_for(ctx: Context, task_type: str, content: Mapping[str, Any], *, timeout_s: float,
               pinned: str | None) -> str | None:
    """The group a lane task waits in as the providers stand now (None: its provider has no
    batch API, so it runs in realtime)."""
    config = ctx.router.lane_provider(task_type, pinned=pinned)
    if config is None:
        return None
    request = GenerationRequest(task_type, dict(content), timeout_s=timeout_s)
    return group_name(config.name, ctx.router.provider(config.name).model_for(request))


def follow_switch(ctx: Context, from_provider: str, to_provider: str, *, limit: int) -> tuple[int, int]:
    """After SwitchProvider: lane tasks waiting for `from_provider`'s batches go where the
    lane would put them now — pinned ones re-pinned to `to_provider`, unpinned ones after the
    new order, like a realtime task's next attempt — into that provider's group, or to a
    worker when it has no batch API. A task a batch took already stays with it. Returns
    (re-pinned, regrouped unpinned)."""
    repinned = regrouped = 0
    for group in ctx.lane.groups():
        if split_group(group)[0] != from_provider:
            continue
        for record in ctx.tasks.get_many(ctx.lane.waiting(group, limit=limit)):
            if not _waits_in_lane(record) or record.lane_group != group:
                continue
            repin = record.pinned_provider == from_provider
            options = replace(record.options, provider=to_provider) if repin else record.options
            target = _group_for(ctx, record.task_type, record.request_content, timeout_s=options.timeout_s,
                                pinned=options.provider)
            if target == group:
                continue
            fields = {"options": encode_field(options), "provider": to_provider} if repin else {}
            if not ctx.lane.move(record.id, group, target, now=ctx.clock(), fields=fields):
                continue  # a batch took it first: it finishes where it is
            repinned, regrouped = repinned + repin, regrouped + (not repin)
            if target is None:
                ctx.enqueue(record.id, record.priority, route=Route(record.task_type, options.provider))
        ctx.lane.forget_if_empty(group)
    return repinned, regrouped


def regroup_retrying(ctx: Context, record: TaskRecord, options: TaskOptions) -> dict[str, Any]:
    """The lane fields of a retrying lane task re-pinned to another provider: its next turn
    waits in that provider's group, or runs in realtime."""
    target = _group_for(ctx, record.task_type, record.request_content, timeout_s=options.timeout_s,
                        pinned=options.provider)
    return {"lane_group": target} if target else {"lane": None, "lane_group": None}


def admit(ctx: Context, task_id: str, group: str) -> bool:
    """The task waits for its group's next batch. A group that just filled a batch is
    collected now rather than at the next beat."""
    size = ctx.lane.admit(task_id, group, now=ctx.clock())
    if size > 0 and size % max(1, ctx.settings.batch_max_requests) == 0:
        try:
            ctx.publisher.dispatch("aiintegration.collect_batches", {})
        except Exception:  # noqa: BLE001 - beat collects it anyway
            log.warning("could not send collect_batches; beat will", exc_info=True)
    return size >= 0


def return_to_lane(ctx: Context, task_id: str, *, known: TaskRecord | None = None) -> str:
    """A process_task message for a lane task (its retry came due, a DLQ replay, the pending
    sweep): it waits in the lane again, queued. Returns what became of it. `known`: the record
    as the caller just read it (else it is read here)."""
    record = known or ctx.tasks.get(task_id)
    if record is None:
        return "skipped:missing"
    now = ctx.clock()
    if record.status == S.RETRYING and ctx.tasks.transition(task_id, to=S.QUEUED, allowed_from=[S.RETRYING],
                                                            fields={"enqueued_at": now}, now=now)[0]:
        record = record.with_changes(status=S.QUEUED)
    if record.status == S.QUEUED and record.lane_group and admit(ctx, task_id, record.lane_group):
        return "lane:waiting"
    return f"skipped:{record.status}"


def release_to_realtime(ctx: Context, record: TaskRecord) -> None:
    """A queued lane task runs in realtime after all (its provider lost its batch API, or
    refused the batch whole)."""
    ctx.tasks.set_fields(record.id, lane="", lane_group="", batch_ref="")
    ctx.enqueue(record.id, record.priority, route=record.route)


# -- beat runs, one at a time ------------------------------------------------------------------
def checkpoint(ctx: Context, step: str) -> None:
    """Tests only (AII_BATCH_CRASH_AT=<step>): the worker SIGKILLs itself here, so a crash
    lands exactly at this step. Steps: `uploaded` (OpenAI's input file is up), `created` (the
    provider has the batch, we have not recorded it), `applying` (half its results applied)."""
    if ctx.settings.batch_crash_at == step:
        log.warning("batch lane: AII_BATCH_CRASH_AT=%s: this worker kills itself now", step)
        os.kill(os.getpid(), signal.SIGKILL)


def lane_lock_ttl_s(ctx: Context) -> float:
    """A dead holder's lock frees within this (the holder renews it while alive)."""
    return min(30.0, max(1.0, 3 * ctx.settings.batch_interval_s))


def locked(name: str) -> Callable[[Run], Run]:
    def wrap(fn: Run) -> Run:
        @wraps(fn)
        def run(ctx: Context, **kwargs: Any) -> dict[str, Any]:
            with ctx.lane.lock(name, ttl_s=lane_lock_ttl_s(ctx)) as got:
                if not got:
                    return {"skipped": "another run holds the lock"}
                result = fn(ctx, **kwargs)
                if any(result.values()):
                    log.info("batch lane %s: %s", name, result)
                return result
        return run
    return wrap


def batch_api(ctx: Context, provider: str) -> BatchAPI | None:
    """The provider's batch API, while it is configured, enabled and has one."""
    config = ctx.router.config(provider)
    if config is None or not batch_enabled(config):
        return None
    adapter = ctx.router.provider(provider)
    return adapter if isinstance(adapter, BatchAPI) else None


# -- collecting and submitting -------------------------------------------------------------------
@locked("lane_collect")
def collect_batches(ctx: Context) -> dict[str, Any]:
    """CollectBatches (beat, every AII_BATCH_INTERVAL_S): first reconcile batches an earlier
    run left before the provider had them, then submit every group that is due (a full
    batch waiting, or its oldest task waited AII_BATCH_MAX_WAIT_S)."""
    out: Counter[str] = Counter()
    blocked: set[str] = set()  # providers with a submission still unresolved
    for batch in live_batches(ctx, UNSENT):
        outcome = _resume(ctx, batch)
        out[outcome] += 1
        if outcome in ("unresolved", "submit_failed"):
            blocked.add(batch.provider)
    for _ in range(3):  # groups that filled up meanwhile (a burst) go in this run, not at the next beat
        submitted = 0
        for group in ctx.lane.groups():
            done, outcomes = _collect_group(ctx, group, blocked)
            submitted += done
            out.update(outcomes)
        if not submitted:
            break
    return dict(out)


def _collect_group(ctx: Context, group: str, blocked: set[str]) -> tuple[int, Counter[str]]:
    """Submit the group's batches while it is due; returns how many, and what happened."""
    out: Counter[str] = Counter()
    provider, _ = split_group(group)
    [(waiting, oldest)] = ctx.lane.group_states([group])
    if waiting == 0:
        ctx.lane.forget_if_empty(group)
        return 0, out
    config = ctx.router.config(provider)
    if config is None or batch_api(ctx, provider) is None:
        out["to_realtime"] += _abandon_group(ctx, group)
        return 0, out
    limits = limits_for(config.kind, ctx.settings.batch_max_requests)
    submitted = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        now = ctx.clock()
        if provider in blocked or not is_due(waiting=waiting, oldest_waited_s=now - (oldest or now),
                                             max_requests=limits.max_requests,
                                             max_wait_s=ctx.settings.batch_max_wait_s):
            break
        taken = _take(ctx, group, config.kind, limits)
        if taken is None:
            break
        outcome = _submit(ctx, *taken)
        out[outcome] += 1
        submitted += 1
        if outcome == "submit_failed":
            blocked.add(provider)
        [(waiting, oldest)] = ctx.lane.group_states([group])
    return submitted, out


def live_batches(ctx: Context, statuses: frozenset[BatchStatus], *, page: int = 100) -> Iterator[LaneBatch]:
    """The lane's batches not ended whose status is one of `statuses`, oldest first: every
    one of them, their records read `page` at a time."""
    ids = ctx.lane.live()
    for start in range(0, len(ids), page):
        yield from (b for b in ctx.lane.get_many(ids[start:start + page]) if b is not None and b.status in statuses)


def _waits_in_lane(record: TaskRecord | None) -> TypeGuard[TaskRecord]:
    """Queued in the lane and in no batch being submitted: a batch may take it."""
    return record is not None and record.status == S.QUEUED and record.lane == LANE and not record.batch_ref


def _abandon_group(ctx: Context, group: str) -> int:
    """A group whose provider is gone, disabled or lost its batch API: its tasks run in realtime."""
    moved = 0
    while ids := ctx.lane.waiting(group, limit=500):
        for record in ctx.tasks.get_many(ids):
            if _waits_in_lane(record):
                release_to_realtime(ctx, record)
                moved += 1
        ctx.lane.drop_waiting(group, ids)
    ctx.lane.forget_if_empty(group)
    return moved


def _take(ctx: Context, group: str, kind: str, limits: BatchLimits) -> tuple[LaneBatch, dict[str, TaskRecord]] | None:
    """The next batch of the group, taken out of the lane: as many of its longest-waiting
    tasks as fit the provider's `limits`."""
    provider, model = split_group(group)
    ids = ctx.lane.waiting(group, limit=limits.max_requests)
    if not ids:
        return None
    loaded = {r.id: r for r in ctx.tasks.get_many(ids) if r is not None}
    ready = [loaded[i] for i in ids if _waits_in_lane(loaded.get(i))]
    chosen = ready[:cut([json_size(r.request_content) for r in ready], limits)]
    ready_ids = {r.id for r in ready}
    stale = [i for i in ids if i not in ready_ids]  # cancelled, gone, realtime: they leave the set
    now = ctx.clock()
    batch = LaneBatch(id=uuid.uuid4().hex, provider=provider, kind=kind, model=model, status=B.PREPARING,
                      created_at=now, intent_at=now)
    taken = ctx.lane.take(group, batch, [r.id for r in chosen] + stale)
    if not taken:  # every one was cancelled or taken meanwhile; they left the set, so look again
        return _take(ctx, group, kind, limits) if chosen or stale else None
    records = {i: loaded[i] for i in taken if i in loaded}
    missing = [i for i in taken if i not in records]  # became ready between the read and the take
    records.update({r.id: r for r in ctx.tasks.get_many(missing) if r is not None})
    return batch.with_changes(tasks=tuple(taken)), records


def _held(ctx: Context, batch: LaneBatch) -> dict[str, TaskRecord]:
    """The batch's tasks it still holds (queued, `batch_ref` = the batch)."""
    return {r.id: r for r in ctx.tasks.get_many(list(batch.tasks))
            if r is not None and r.status == S.QUEUED and r.batch_ref == batch.id}


def _refuse(ctx: Context, batch: LaneBatch, records: Mapping[str, TaskRecord], error: str) -> str:
    """No provider batch will be made of it: its tasks run in realtime."""
    for record in records.values():
        release_to_realtime(ctx, record)
    ctx.lane.finish(batch, status=B.REFUSED, error=error, ended_at=ctx.clock(),
                    counts={"total": len(batch.tasks), "requeued": len(records)})
    return "refused"


def _submit(ctx: Context, batch: LaneBatch, records: Mapping[str, TaskRecord]) -> str:
    """Upload and create the provider batch, recording the intent before each step."""
    api = batch_api(ctx, batch.provider)
    if api is None:
        return _refuse(ctx, batch, records, "the provider has no batch API now")
    timeout_s = ctx.router.provider(batch.provider).config.timeout_s
    requests = [BatchRequest(r.id, GenerationRequest(r.task_type, r.request_content, timeout_s=timeout_s,
                                                     model=batch.model)) for r in records.values()]
    try:
        upload = api.batch_upload(batch.id, requests)
        checkpoint(ctx, "uploaded")
        batch = ctx.lane.update(batch, status=B.SUBMITTING, intent_at=ctx.clock(), file_id=upload,
                                counts={"total": len(requests)})
        created = api.batch_create(batch.id, requests, upload)
    except PermanentError as exc:
        log.warning("the provider refused batch %s (%s): its %d tasks run in realtime", batch.id, exc.message,
                    len(records))
        return _refuse(ctx, batch, records, f"{exc.code}: {exc.message}")
    except TransientError as exc:  # maybe created: the next run asks the provider before resubmitting
        log.warning("submitting batch %s failed (%s); the next run reconciles", batch.id, exc.message)
        ctx.lane.update(batch, error=f"{exc.code}: {exc.message}")
        return "submit_failed"
    checkpoint(ctx, "created")
    start(ctx, record_submitted(ctx, batch, created), records)
    return "submitted"


def record_submitted(ctx: Context, batch: LaneBatch, created: ProviderBatch) -> LaneBatch:
    return ctx.lane.mark_submitted(batch, status=B.SUBMITTED, provider_id=created.id, submitted_at=ctx.clock(),
                                   provider_status=created.status, provider_counts=dict(created.counts), error=None)


def start(ctx: Context, batch: LaneBatch, records: Mapping[str, TaskRecord] | None = None) -> LaneBatch:
    """The submitted batch's tasks run: queued → running with `task.batched` and `task.started`,
    owned by the batch (`run_id`). Idempotent: a task already started, or cancelled meanwhile,
    is left as it is."""
    held = _held(ctx, batch) if records is None else records
    now = ctx.clock()
    deadline = (batch.submitted_at or now) + COMPLETION_WINDOW_S
    worker = f"batch:{batch.provider}"
    for record in held.values():
        attempt = record.attempts + 1
        ctx.tasks.transition(
            record.id, to=S.RUNNING, allowed_from=[S.QUEUED], require=("batch_ref", batch.id),
            events=[("task.batched", {"provider": batch.provider, "batch_id": batch.provider_id}),
                    ("task.started", {"attempt": attempt, "worker_id": worker, "recovered": False, "batch": True})],
            fields={"batch_ref": "", "run_id": batch.id, "attempts": attempt, "started_at": now, "worker_id": worker,
                    "deadline_at": deadline, "lease_until": deadline, "provider": batch.provider},
            now=now)
    return ctx.lane.update(batch, started=True)


def _resume(ctx: Context, batch: LaneBatch) -> str:
    """A batch an earlier run left before the provider's id was on record."""
    api = batch_api(ctx, batch.provider)
    if batch.status == B.SUBMITTING and api is None:
        return "unresolved"  # it may be at the provider: never submit its tasks elsewhere before knowing
    if batch.status == B.SUBMITTING and api is not None:
        try:
            found = api.batch_find(batch.id, since=batch.intent_at or batch.created_at,
                                   total=int(batch.counts.get("total", len(batch.tasks))),
                                   known=ctx.lane.provider_ids_since(batch.created_at - 2 * CLOCK_SLACK_S))
        except AIIntegrationError as exc:
            log.warning("cannot reconcile batch %s yet (%s)", batch.id, exc.message)
            return "unresolved"
        if found is not None:
            log.warning("batch %s reached %s before its worker stopped: adopted %s", batch.id, batch.provider,
                        found.id)
            start(ctx, record_submitted(ctx, batch, found))
            return "adopted"
    held = _held(ctx, batch)
    if not held or api is None:  # nothing left to send, or nowhere to send it: back to the lane
        back = ctx.lane.release(batch, now=ctx.clock())
        ctx.lane.finish(batch, status=B.ABANDONED, ended_at=ctx.clock(),
                        counts={"total": len(batch.tasks), "requeued": back})
        return "abandoned"
    log.warning("batch %s never reached %s: submitting it again", batch.id, batch.provider)
    return _submit(ctx, batch, held)


# -- what operators see ----------------------------------------------------------------------------
def list_batches(ctx: Context, caller: Caller = TRUSTED, *, provider: str | None = None, status: str | None = None,
                 limit: int = DEFAULT_PAGE, cursor: str | None = None,
                 max_scanned: int = 5000) -> tuple[list[dict[str, Any]], str | None]:
    """Lane batches, newest first, filtered; `next_cursor` (a creation time) continues the
    listing. Bounded work per call: a sparse filter may return a short page and a cursor."""
    caller.require_operator("the batch lane")
    items: list[dict[str, Any]] = []
    now, scanned, last, more = ctx.clock(), 0, cursor, True
    while more and len(items) < limit and scanned < max_scanned:
        page, more = ctx.lane.page(limit=100, cursor=last)
        for index, (batch, score) in enumerate(page):
            scanned, last = scanned + 1, repr(score)
            if (provider is None or batch.provider == provider) and (status is None or batch.status == status):
                items.append(batch.public(now))
            if len(items) == limit:
                more = more or index < len(page) - 1
                break
    return items, (last if more else None)
