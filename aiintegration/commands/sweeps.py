"""The beat sweeps: ProcessPendingTasks, CleanupTimedOutTasks, ProcessDeadLetterQueue.

Each works from sorted-set indexes (never a keyspace scan), does at most `limit` items a
run, and holds a Redis lock so two beat processes started by mistake do not both sweep.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiintegration.commands.breaker import breaker_for
from aiintegration.commands.context import Context
from aiintegration.commands.failures import mark_timed_out
from aiintegration.config import broker_lists
from aiintegration.domain.records import dumps
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import TaskTimedOut

log = logging.getLogger(__name__)
S = TaskStatus
MAX_AUTO_RETRIES = 2
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@contextmanager
def sweep_lock(ctx: Context, name: str, ttl_s: int = 120) -> Iterator[bool]:
    key, token = f"{ctx.settings.key_prefix}:lock:{name}", uuid.uuid4().hex
    got = bool(ctx.redis.set(key, token, nx=True, ex=ttl_s))
    try:
        yield got
    finally:
        if got:
            ctx.redis.eval(_RELEASE, 1, key, token)


def _locked(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(ctx: Context, **kwargs: Any) -> dict[str, Any]:
            with sweep_lock(ctx, name) as got:
                if not got:
                    return {"skipped": "another sweep holds the lock"}
                result = fn(ctx, **kwargs)
                log.info("sweep %s: %s", name, result)
                return result
        run.__doc__, run.__name__ = fn.__doc__, fn.__name__
        return run
    return wrap


@_locked("cleanup")
def cleanup_timed_out_tasks(ctx: Context, *, limit: int = 500, grace_s: float = 5.0) -> dict[str, Any]:
    """Running tasks past their deadline, or whose worker stopped renewing its lease (it
    died), → timed_out → retry or DLQ. The worker's own watchdog normally gets there first;
    this is the backstop. Also drops expired records from the indexes and compacts the
    event streams of finished tasks."""
    now = ctx.clock()
    overdue = ctx.tasks.ids_by_score("deadline", max_score=now - grace_s, limit=limit)
    abandoned = ctx.tasks.ids_by_score("lease", max_score=now - grace_s, limit=limit)
    ids = list(dict.fromkeys([i for i, _ in overdue] + [i for i, _ in abandoned]))[:limit]
    outcomes: dict[str, int] = {}
    for record in ctx.tasks.get_many(ids):
        if record is None or record["status"] != S.RUNNING:
            continue
        late = (record.get("deadline_at") or 0) < now - grace_s
        why = "ran past its deadline" if late else "its worker stopped responding"
        exc = TaskTimedOut(f"attempt {record['attempts']} {why}", provider=record.get("provider"))
        outcome = mark_timed_out(ctx, record, run_id=record.get("run_id"), exc=exc) or "moved_on"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    expired = ctx.tasks.drop_expired(now=now, limit=limit)
    # Streams of tasks finished a while ago (no live feed still follows them) fold into the
    # records: ~1.3 KiB less per kept task (bench/memory_and_sweeps.py).
    compacted = ctx.tasks.compact_finished(before=now - ctx.settings.events_compact_after_s)
    return {"examined": len(ids), "expired": expired, "compacted": compacted, **outcomes}


UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key`)
PROCESS_TASK = "aiintegration.process_task"


def _unacked_task_ids(ctx: Context) -> set[str]:
    """Task ids of process_task messages a worker has taken but not acknowledged (kombu's
    `unacked` hash: prefetched, running, or waiting to be restored after a crash). The hash
    is bounded by prefetch x concurrency per worker, so reading it whole is cheap."""
    ids: set[str] = set()
    for raw in ctx.redis.hvals(UNACKED_KEY):
        try:
            message = json.loads(raw)[0]
            if message.get("headers", {}).get("task") != PROCESS_TASK:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            ids.add(str(json.loads(body)[1]["task_id"]))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue  # not a message we wrote: it covers nothing
    return ids


def _messages_for_queued(ctx: Context) -> int:
    """How many queued records the broker still holds a message for: everything waiting in
    the queue's lists (all are process_task messages or sweeps, an overestimate by at most
    a few) plus unacked process_task messages of records that are still queued."""
    pipe = ctx.redis.pipeline(transaction=False)
    for name in broker_lists():
        pipe.llen(name)
    waiting = sum(pipe.execute())
    taken = list(_unacked_task_ids(ctx))
    covered = sum(1 for r in ctx.tasks.get_many(taken) if r and r["status"] == S.QUEUED)
    return waiting + covered


@_locked("pending")
def process_pending_tasks(ctx: Context, *, limit: int = 500) -> dict[str, Any]:
    """Re-enqueue work that has no broker message (lost publish, Redis failover): queued
    records older than the grace period when the broker holds fewer messages than there
    are queued records, and retrying records well past their retry time. Duplicates are
    harmless (the claim lets one run); then publish counts by status."""
    now, grace = ctx.clock(), ctx.settings.pending_grace_s
    p = ctx.settings.key_prefix
    queued_total = ctx.tasks.count(S.QUEUED)
    missing = max(0, queued_total - _messages_for_queued(ctx))
    requeued = 0
    if missing:
        stale = ctx.tasks.ids_by_score(f"status:{S.QUEUED}", max_score=now - grace, limit=min(limit, missing))
        for record in ctx.tasks.get_many([i for i, _ in stale]):
            if record and record["status"] == S.QUEUED and (record.get("enqueued_at") or 0) < now - grace:
                ctx.tasks.set_fields(record["id"], enqueued_at=now)
                ctx.enqueue(record["id"], int(record["priority"]), None)
                requeued += 1
    overdue = ctx.tasks.ids_by_score("retry", max_score=now - grace, limit=limit)
    for record in ctx.tasks.get_many([i for i, _ in overdue]):
        if record and record["status"] == S.RETRYING:
            ctx.redis.zadd(f"{p}:idx:retry", {record["id"]: now})
            ctx.enqueue(record["id"], int(record["priority"]), None)
            requeued += 1
    counts = {status.value: ctx.tasks.count(status) for status in S}
    ctx.redis.hset(f"{p}:stats", mapping={"at": now, "counts": dumps(counts), "requeued": requeued})
    return {"requeued": requeued, "counts": counts}


@_locked("dlq")
def process_dead_letter_queue(ctx: Context, *, limit: int = 500) -> dict[str, Any]:
    """Each new (`pending`) DLQ entry: auto-retried when its cause was transient, its
    provider's breaker is not open and it has been auto-retried fewer than 2 times;
    otherwise marked `manual_review`."""
    from aiintegration.commands.lifecycle import retry_task

    p = ctx.settings.key_prefix
    ids = [i for i, _ in ctx.tasks.ids_by_score("dlq", max_score=ctx.clock(), limit=limit)]
    retried = reviewed = 0
    raw_entries = ctx.redis.hmget(f"{p}:dlq", ids) if ids else []
    for task_id, raw in zip(ids, raw_entries, strict=True):
        entry = json.loads(raw) if raw else None
        if not entry or entry.get("review_state") != "pending":
            continue
        provider = entry.get("provider")
        healthy = not provider or breaker_for(ctx, provider).allows()
        if entry["error"].get("retryable") and healthy and int(entry.get("auto_retries") or 0) < MAX_AUTO_RETRIES:
            count = int(entry.get("auto_retries") or 0) + 1
            ctx.tasks.set_fields(task_id, auto_retries=count)
            retry_task(ctx, task_id, f"automatic DLQ retry {count} of {MAX_AUTO_RETRIES}")
            retried += 1
        else:
            entry["review_state"] = "manual_review"
            ctx.redis.hset(f"{p}:dlq", task_id, dumps(entry))
            reviewed += 1
    return {"auto_retried": retried, "manual_review": reviewed}
