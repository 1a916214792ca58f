"""The beat sweeps: ProcessPendingTasks, CleanupTimedOutTasks, ProcessDeadLetterQueue.

Each works from sorted-set indexes (never a keyspace scan), `limit` items a page, through
everything that is due or until its time budget (under its lock's 120 s) runs out, and holds
a lock so two beat processes started by mistake do not both sweep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from aiintegration.commands.batches import return_to_lane
from aiintegration.commands.context import Context
from aiintegration.commands.dlq import drop_old_entries
from aiintegration.commands.failures import mark_timed_out
from aiintegration.commands.lifecycle import retry_task
from aiintegration.domain.batching import LANE
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import Conflict, NotFound, TaskTimedOut
from aiintegration.store.dlq import DlqEntry

log = logging.getLogger(__name__)
S = TaskStatus
MAX_AUTO_RETRIES = 2
Sweep = Callable[..., dict[str, Any]]


def _locked(name: str) -> Callable[[Sweep], Sweep]:
    def wrap(fn: Sweep) -> Sweep:
        @wraps(fn)
        def run(ctx: Context, **kwargs: Any) -> dict[str, Any]:
            with ctx.sweeps.lock(name) as got:
                if not got:
                    return {"skipped": "another sweep holds the lock"}
                result = fn(ctx, **kwargs)
                log.info("sweep %s: %s", name, result)
                return result
        return run
    return wrap


# What one run of a sweep may spend working through what is due, below its lock's 120 s (a
# second beat's run must not start while this one still works); the rest waits for the next.
RUN_BUDGET_S = 100.0


@_locked("cleanup")
def cleanup_timed_out_tasks(ctx: Context, *, limit: int = 500, grace_s: float = 5.0,
                            budget_s: float = RUN_BUDGET_S) -> dict[str, Any]:
    """Running tasks past their deadline, or whose worker stopped renewing its lease (it
    died), → timed_out → retry or DLQ. The worker's own watchdog normally gets there first;
    this is the backstop, and the way back for the attempts of a worker host that vanished:
    it works through everything due, `limit` at a time, for up to 40% of `budget_s`. Then it
    keeps finished records (`TaskStore.upkeep`) with the rest: folds their event streams in,
    deletes them when their retention ends."""
    now, started = ctx.clock(), time.monotonic()
    examined = 0
    outcomes: dict[str, int] = {}
    while True:
        ids = ctx.tasks.overdue(before=now - grace_s, limit=limit)
        rescore: dict[str, float] = {}
        gone: list[str] = []
        for task_id, record in zip(ids, ctx.tasks.get_many(ids), strict=True):
            if record is None or record.status != S.RUNNING:
                gone.append(task_id)  # finished meanwhile, or by code that did not know the index
                continue
            late = (record.deadline_at or 0) < now - grace_s
            if not late and (record.lease_until or 0) >= now - grace_s:
                # its worker renews the lease (an index entry older than the record's lease end)
                rescore[task_id] = min(record.lease_until or now, record.deadline_at or now)
                continue
            why = "ran past its deadline" if late else "its worker stopped responding"
            exc = TaskTimedOut(f"attempt {record.attempts} {why}", provider=record.provider)
            outcome = mark_timed_out(ctx, record, run_id=record.run_id, exc=exc) or "moved_on"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        ctx.tasks.settle_overdue(rescore=rescore, gone=gone, seen=ids)
        examined += len(ids)
        if len(ids) < limit or time.monotonic() - started > 0.4 * budget_s:
            break
    # Streams of tasks finished a while ago (no live feed still follows them) fold into the
    # records, ~1.3 KiB less per kept task (bench/memory_and_sweeps.py); records past their
    # retention go, with their ids in every index.
    kept = ctx.tasks.upkeep(now=now, budget_s=max(1.0, budget_s - (time.monotonic() - started)))
    return {"examined": examined, "expired": kept["expired"], "compacted": kept["folded"], **outcomes}


def _messages_for_queued(ctx: Context) -> tuple[int, set[str]]:
    """How many queued records the broker still holds a message for: everything waiting in
    the queue's lists (all are process_task messages or sweeps, an overestimate by at most
    a few) plus unacked process_task messages of records that are still queued; and the ids
    of those unacked ones."""
    waiting = sum(ctx.broker.depth_by_step())
    taken = list(ctx.broker.unacked_process_task_ids())
    covered = {tid for tid, status in zip(taken, ctx.tasks.statuses(taken), strict=True) if status == S.QUEUED}
    return waiting + len(covered), covered


def _requeue_queued(ctx: Context, *, missing: int, held: set[str], now: float, grace: float,
                    budget_s: float, page: int = 500) -> int:
    """Send a message again for up to `missing` queued records older than the grace period
    that have none: oldest first, page by page past the ones that need none (in the batch
    lane, deferred, unacked in a worker: `held`, or sent again within the grace period),
    until that many were sent, the queue's end or `budget_s`."""
    requeued, offset, started = 0, 0, time.monotonic()
    while requeued < missing and time.monotonic() - started < budget_s:
        ids = ctx.tasks.in_status(S.QUEUED, created_before=now - grace, limit=page, offset=offset)
        if not ids:
            break
        offset += len(ids)
        sleeping = ctx.tasks.deferred_among(ids)
        for record in ctx.tasks.get_many([i for i in ids if i not in sleeping and i not in held]):
            if record is None or record.status != S.QUEUED:
                continue
            if record.lane == LANE:
                if not record.batch_ref:
                    return_to_lane(ctx, record.id, known=record)  # lost on its way into the lane: it waits again
                continue
            if (record.enqueued_at or 0) < now - grace and requeued < missing:
                ctx.tasks.set_fields(record.id, enqueued_at=now)
                ctx.enqueue(record.id, record.priority, attempt=record.attempts + 1, route=record.route)
                requeued += 1
    return requeued


@_locked("pending")
def process_pending_tasks(ctx: Context, *, limit: int = 500, budget_s: float = 40.0) -> dict[str, Any]:
    """Re-enqueue work that has no broker message (lost publish, Redis failover): queued
    records older than the grace period, as many as the broker holds fewer messages than
    there are queued records (at most `limit` a run), and retrying records well past their
    retry time. Duplicates are harmless (the claim lets one run); then publish counts by status."""
    now, grace = ctx.clock(), ctx.settings.pending_grace_s
    # Queued batch-lane tasks wait in the lane, and deferred ones in Redis, not on the broker.
    in_lane, deferred = sum(ctx.lane.depths().values()), ctx.tasks.count_deferred()
    messages, held = _messages_for_queued(ctx)
    missing = max(0, ctx.tasks.count(S.QUEUED) - messages - in_lane - deferred)
    requeued = _requeue_queued(ctx, missing=min(limit, missing), held=held, now=now, grace=grace,
                               budget_s=budget_s) if missing else 0
    # A deferred retrying task is due on `idx:retry` when its deferral ends (TaskStore.defer).
    due = ctx.tasks.retries_due(before=now - grace, limit=limit)
    sleeping = ctx.tasks.deferred_among(due)
    for record in ctx.tasks.get_many([i for i in due if i not in sleeping]):
        if record and record.status == S.RETRYING:
            ctx.tasks.retry_resent(record.id, now=now)
            ctx.enqueue(record.id, record.priority, attempt=record.attempts + 1, route=record.route)
            requeued += 1
    counts = ctx.tasks.counts()
    ctx.sweeps.record_counts(at=now, counts=counts, requeued=requeued)
    return {"requeued": requeued, "counts": counts}


def start_deferred_releaser(ctx: Context) -> threading.Thread:
    """In every worker process: every `AII_DEFERRED_INTERVAL_S`, send the messages of the
    deferred tasks that are due (`TaskStore.take_deferred` hands each to one process)."""
    def run() -> None:
        while True:
            time.sleep(ctx.settings.deferred_interval_s)
            try:
                release_deferred_tasks(ctx)
            except Exception:  # noqa: BLE001 - the next round retries (a message not sent went back to the index)
                log.warning("could not release deferred tasks", exc_info=True)

    thread = threading.Thread(target=run, name="aii-deferred", daemon=True)
    thread.start()
    return thread


def release_deferred_tasks(ctx: Context, *, limit: int = 1000) -> dict[str, Any]:
    """Send the messages of deferred tasks that are due: a throttled task far back in a quota
    line sleeps in Redis (`TaskStore.defer`) rather than in a worker's memory. A message that
    cannot be sent goes back to the index for the next run."""
    released = 0
    while ids := ctx.tasks.take_deferred(before=ctx.clock(), limit=limit):
        records = [r for r in ctx.tasks.get_many(ids) if r and r.status in (S.QUEUED, S.RETRYING)]
        for n, record in enumerate(records):
            try:
                ctx.enqueue(record.id, record.priority, attempt=record.attempts + 1, route=record.route)
            except Exception:
                for rest in records[n:]:
                    ctx.tasks.defer(rest.id, until=ctx.clock())
                raise
            released += 1
        if len(ids) < limit:
            break
    return {"released": released}


def _for_review(entry: DlqEntry) -> DlqEntry:
    """A new entry the DLQ sweep did not retry: marked for an operator (one an operator
    decided on meanwhile keeps that decision)."""
    return {**entry, "review_state": "manual_review"} if entry.get("review_state") == "pending" else entry


@_locked("dlq")
def process_dead_letter_queue(ctx: Context, *, limit: int = 500, budget_s: float = RUN_BUDGET_S) -> dict[str, Any]:
    """Each new (`pending`) DLQ entry: auto-retried when its cause was transient, its
    provider's breaker is not open and it has been auto-retried fewer than 2 times;
    otherwise marked `manual_review`. The queue is read oldest first, `limit` at a time, past
    the entries waiting for an operator (they stay in it), until its end or half of
    `budget_s`. Entries past AII_DLQ_RETENTION_S leave with their records."""
    started, now = time.monotonic(), ctx.clock()
    retried = reviewed = 0
    after: tuple[float, str] | None = None
    while time.monotonic() - started < budget_s / 2:
        rows = ctx.dlq.waiting_after(after, before=now, limit=limit)
        for (task_id, _), entry in zip(rows, ctx.dlq.get_many([i for i, _ in rows]), strict=True):
            if not entry or entry.get("review_state") != "pending":
                continue
            provider = entry.get("provider")
            healthy = not provider or ctx.breakers[provider].allows()
            auto_retries = int(entry.get("auto_retries") or 0)
            if entry["error"].get("retryable") and healthy and auto_retries < MAX_AUTO_RETRIES:
                ctx.tasks.set_fields(task_id, auto_retries=auto_retries + 1)
                try:
                    retry_task(ctx, task_id, f"automatic DLQ retry {auto_retries + 1} of {MAX_AUTO_RETRIES}")
                except NotFound:  # its record is gone: the entry has nothing left to retry
                    ctx.dlq.remove(task_id)
                    continue
                except Conflict:  # replayed or retried by hand meanwhile
                    continue
                retried += 1
            else:
                # from the entry as stored now: a note added since it was read stays; one that
                # left the queue meanwhile is not written back
                reviewed += ctx.dlq.update(task_id, _for_review) is not None
        if len(rows) < limit:
            break
        after = (rows[-1][1], rows[-1][0])
    dropped = drop_old_entries(ctx, budget_s=max(1.0, budget_s - (time.monotonic() - started)))
    return {"auto_retried": retried, "manual_review": reviewed, "dropped": dropped}
