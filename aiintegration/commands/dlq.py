"""Operator actions on the dead-letter queue: list, replay (one or filtered), annotate, discard."""

from __future__ import annotations

import json
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.lifecycle import retry_task
from aiintegration.domain.records import dumps, iso
from aiintegration.errors import Conflict, NotFound, ValidationError

REVIEW_STATES = ("pending", "manual_review", "requeued", "discarded")
MAX_NOTE = 2000


def _key(ctx: Context) -> str:
    return f"{ctx.settings.key_prefix}:dlq"


def _index(ctx: Context) -> str:
    return f"{ctx.settings.key_prefix}:idx:dlq"


def get_entry(ctx: Context, task_id: str) -> dict[str, Any]:
    raw = ctx.redis.hget(_key(ctx), task_id)
    if not raw:
        raise NotFound(f"no DLQ entry for task {task_id}")
    entry: dict[str, Any] = json.loads(raw)
    return entry


def _matches(entry: dict[str, Any], filters: dict[str, Any]) -> bool:
    error = entry.get("error") or {}
    return all((
        not filters.get("provider") or entry.get("provider") == filters["provider"],
        not filters.get("error_class") or error.get("class") == filters["error_class"],
        not filters.get("task_type") or entry.get("task_type") == filters["task_type"],
        not filters.get("requested_by") or entry.get("requested_by") == filters["requested_by"],
        not filters.get("review_state") or entry.get("review_state") == filters["review_state"],
    ))


def list_entries(ctx: Context, *, limit: int = 50, cursor: str | None = None,
                 **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Entries still in the DLQ, newest first, filtered; cursor = score of the last one."""
    max_score = f"({cursor}" if cursor else "+inf"
    items: list[dict[str, Any]] = []
    last: float | None = None
    scanned = 0
    while len(items) < limit and scanned < 10000:
        rows = ctx.redis.zrevrangebyscore(_index(ctx), max_score, "-inf", start=0, num=200, withscores=True)
        if not rows:
            break
        scanned += len(rows)
        raws = ctx.redis.hmget(_key(ctx), [m for m, _ in rows])
        for (_member, score), raw in zip(rows, raws, strict=True):
            last = score
            entry = json.loads(raw) if raw else None
            if entry and _matches(entry, filters):
                items.append(entry)
                if len(items) == limit:
                    break
        max_score = f"({last!r}"
    more = last is not None and len(items) == limit and ctx.redis.zcount(_index(ctx), "-inf", f"({last!r}") > 0
    return items, (repr(last) if more else None)


def replay(ctx: Context, task_id: str, reason: str = "replayed from the DLQ") -> dict[str, Any]:
    entry = get_entry(ctx, task_id)
    if entry.get("review_state") in ("requeued", "discarded"):
        raise Conflict(f"DLQ entry is already {entry['review_state']}", details={"review_state": entry["review_state"]})
    return retry_task(ctx, task_id, reason)


def replay_matching(ctx: Context, *, limit: int = 500, **filters: Any) -> dict[str, Any]:
    if not any(filters.values()):
        raise ValidationError("a filter is required to replay in bulk",
                              details={"filter": "give provider, error_class, task_type, requested_by or review_state"})
    entries, _ = list_entries(ctx, limit=limit, **filters)
    replayed, skipped = [], []
    for entry in entries:
        try:
            replay(ctx, entry["task_id"], "bulk replay from the DLQ")
            replayed.append(entry["task_id"])
        except (Conflict, NotFound):
            skipped.append(entry["task_id"])
    return {"replayed": replayed, "skipped": skipped}


def review(ctx: Context, task_id: str, note: Any, review_state: Any = "manual_review") -> dict[str, Any]:
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE:
        raise ValidationError("a note is required", details={"note": f"1 to {MAX_NOTE} characters"})
    if review_state not in ("pending", "manual_review"):
        raise ValidationError("invalid review_state", details={"review_state": "pending or manual_review"})
    entry = get_entry(ctx, task_id)
    entry["notes"] = [*entry.get("notes", []), {"at": iso(ctx.clock()), "note": note.strip()}]
    entry["review_state"] = review_state
    ctx.redis.hset(_key(ctx), task_id, dumps(entry))
    return entry


def discard(ctx: Context, task_id: str) -> dict[str, Any]:
    """Out of the DLQ for good: the entry is marked discarded and the record starts its
    retention clock (it stays `dead_lettered`)."""
    entry = get_entry(ctx, task_id)
    ctx.tasks.dlq_mark(task_id, "discarded")
    ctx.redis.expire(ctx.tasks.key(task_id), ctx.settings.retention_s)
    ctx.redis.expire(ctx.tasks.stream_key(task_id), ctx.settings.retention_s)
    return {**entry, "review_state": "discarded"}
