"""Operator actions on the dead-letter queue: list, replay (one or filtered), annotate, discard.
Every one of them is for operators; callers by task name and the CLI are trusted."""

from __future__ import annotations

import time
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.lifecycle import retry_task
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.limits import DEFAULT_PAGE, MAX_NOTE
from aiintegration.domain.records import TaskRecord, iso
from aiintegration.errors import Conflict, NotFound, ValidationError
from aiintegration.store.dlq import DlqEntry

REVIEW_STATES = ("pending", "manual_review")  # of entries in the queue; replayed or discarded ones leave it
FILTERS = ("provider", "error_class", "task_type", "requested_by", "tenant", "review_state")
WHAT = "the dead-letter queue"


def get_entry(ctx: Context, task_id: str, caller: Caller = TRUSTED) -> DlqEntry:
    caller.require_operator(WHAT)
    entry = ctx.dlq.get(task_id)
    if entry is None:
        raise NotFound(f"no DLQ entry for task {task_id}")
    return entry


def _matches(entry: DlqEntry, filters: dict[str, Any]) -> bool:
    error = entry.get("error") or {}
    return all((
        not filters.get("provider") or entry.get("provider") == filters["provider"],
        not filters.get("error_class") or error.get("class") == filters["error_class"],
        not filters.get("task_type") or entry.get("task_type") == filters["task_type"],
        not filters.get("requested_by") or entry.get("requested_by") == filters["requested_by"],
        not filters.get("tenant") or entry.get("tenant", "default") == filters["tenant"],
        not filters.get("review_state") or entry.get("review_state") == filters["review_state"],
    ))


def list_entries(ctx: Context, caller: Caller = TRUSTED, *, limit: int = DEFAULT_PAGE, cursor: str | None = None,
                 **filters: Any) -> tuple[list[DlqEntry], str | None]:
    """Entries still in the DLQ, newest first, filtered; cursor = score of the last one."""
    caller.require_operator(WHAT)
    return ctx.dlq.scan(lambda entry: _matches(entry, filters), limit=limit, cursor=cursor)


def replay(ctx: Context, task_id: str, reason: str = "replayed from the DLQ", caller: Caller = TRUSTED) -> TaskRecord:
    """The task runs again under its id and history, with a fresh retry budget; its entry leaves the DLQ."""
    get_entry(ctx, task_id, caller)
    return retry_task(ctx, task_id, reason)


def replay_matching(ctx: Context, caller: Caller = TRUSTED, *, limit: int = 500, **filters: Any) -> dict[str, Any]:
    if not any(filters.values()):
        raise ValidationError("a filter is required to replay in bulk",
                              details={"filter": f"give {', '.join(FILTERS[:-1])} or {FILTERS[-1]}"})
    entries, _ = list_entries(ctx, caller, limit=limit, **filters)
    replayed, skipped = [], []
    for entry in entries:
        try:
            replay(ctx, entry["task_id"], "bulk replay from the DLQ")
            replayed.append(entry["task_id"])
        except (Conflict, NotFound):
            skipped.append(entry["task_id"])
    return {"replayed": replayed, "skipped": skipped}


def review(ctx: Context, task_id: str, note: Any, review_state: Any = "manual_review",
           caller: Caller = TRUSTED) -> DlqEntry:
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
        raise ValidationError("a note is required", details={"note": f"1 to {MAX_NOTE} characters"})
    if review_state not in REVIEW_STATES:
        raise ValidationError("invalid review_state", details={"review_state": " or ".join(REVIEW_STATES)})
    get_entry(ctx, task_id, caller)
    added = {"at": iso(ctx.clock()), "note": note.strip()}
    entry = ctx.dlq.update(task_id, lambda e: {**e, "notes": [*e.get("notes", []), added],
                                                "review_state": review_state})
    if entry is None:
        raise NotFound(f"no DLQ entry for task {task_id}")  # replayed or discarded meanwhile
    return entry


def discard(ctx: Context, task_id: str, caller: Caller = TRUSTED) -> DlqEntry:
    """Out of the DLQ for good: the entry is removed and the record (still `dead_lettered`)
    starts its retention clock, leaving every index when it expires."""
    entry = get_entry(ctx, task_id, caller)
    ctx.dlq.remove(task_id)
    ctx.tasks.start_retention(task_id, now=ctx.clock())
    return {**entry, "review_state": "discarded"}


def drop_old_entries(ctx: Context, *, limit: int = 1000, budget_s: float = 60.0) -> int:
    """Entries older than AII_DLQ_RETENTION_S leave the DLQ, and their records go a second
    later (the cleanup sweep deletes them). All that are due, `limit` at a time, for up to
    `budget_s`."""
    now, started, dropped = ctx.clock(), time.monotonic(), 0
    while time.monotonic() - started < budget_s:
        old = ctx.dlq.older_than(now - ctx.settings.dlq_retention_s, limit=limit)
        for task_id, record in zip(old, ctx.tasks.get_many(old), strict=True):
            ctx.dlq.remove(task_id)
            if record is not None and record.status == "dead_lettered":
                ctx.tasks.start_retention(task_id, ttl_s=1, now=now)
        dropped += len(old)
        if len(old) < limit:
            break
    return dropped
