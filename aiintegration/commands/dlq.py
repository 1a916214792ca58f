"""Operator actions on the dead-letter queue: list, replay (one or filtered), annotate, discard."""

from __future__ import annotations

from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.lifecycle import retry_task
from aiintegration.domain.limits import DEFAULT_PAGE, MAX_NOTE
from aiintegration.domain.records import TaskRecord, iso
from aiintegration.errors import Conflict, NotFound, ValidationError
from aiintegration.store.dlq import DlqEntry

REVIEW_STATES = ("pending", "manual_review", "requeued", "discarded")
REVIEWABLE_STATES = ("pending", "manual_review")  # what a review may set
FILTERS = ("provider", "error_class", "task_type", "requested_by", "review_state")


def get_entry(ctx: Context, task_id: str) -> DlqEntry:
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
        not filters.get("review_state") or entry.get("review_state") == filters["review_state"],
    ))


def list_entries(ctx: Context, *, limit: int = DEFAULT_PAGE, cursor: str | None = None,
                 **filters: Any) -> tuple[list[DlqEntry], str | None]:
    """Entries still in the DLQ, newest first, filtered; cursor = score of the last one."""
    return ctx.dlq.scan(lambda entry: _matches(entry, filters), limit=limit, cursor=cursor)


def replay(ctx: Context, task_id: str, reason: str = "replayed from the DLQ") -> TaskRecord:
    entry = get_entry(ctx, task_id)
    if entry.get("review_state") in ("requeued", "discarded"):
        raise Conflict(f"DLQ entry is already {entry['review_state']}", details={"review_state": entry["review_state"]})
    return retry_task(ctx, task_id, reason)


def replay_matching(ctx: Context, *, limit: int = 500, **filters: Any) -> dict[str, Any]:
    if not any(filters.values()):
        raise ValidationError("a filter is required to replay in bulk",
                              details={"filter": f"give {', '.join(FILTERS[:-1])} or {FILTERS[-1]}"})
    entries, _ = list_entries(ctx, limit=limit, **filters)
    replayed, skipped = [], []
    for entry in entries:
        try:
            replay(ctx, entry["task_id"], "bulk replay from the DLQ")
            replayed.append(entry["task_id"])
        except (Conflict, NotFound):
            skipped.append(entry["task_id"])
    return {"replayed": replayed, "skipped": skipped}


def review(ctx: Context, task_id: str, note: Any, review_state: Any = "manual_review") -> DlqEntry:
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
        raise ValidationError("a note is required", details={"note": f"1 to {MAX_NOTE} characters"})
    if review_state not in REVIEWABLE_STATES:
        raise ValidationError("invalid review_state", details={"review_state": " or ".join(REVIEWABLE_STATES)})
    entry = get_entry(ctx, task_id)
    entry["notes"] = [*entry.get("notes", []), {"at": iso(ctx.clock()), "note": note.strip()}]
    entry["review_state"] = review_state
    ctx.dlq.put(entry)
    return entry


def discard(ctx: Context, task_id: str) -> DlqEntry:
    """Out of the DLQ for good: the entry is marked discarded and the record starts its
    retention clock (it stays `dead_lettered`)."""
    entry = get_entry(ctx, task_id)
    ctx.dlq.leave(task_id, "discarded")
    ctx.tasks.start_retention(task_id)
    return {**entry, "review_state": "discarded"}
