"""How a task record is laid out in its Redis hash, and how callers see it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

PUBLIC_FIELDS = (
    "id", "task_type", "status", "priority", "requested_by", "request_content", "metadata", "options",
    "attempts", "max_retries", "provider", "worker_id", "result", "error",
    "created_at", "started_at", "finished_at", "updated_at", "deadline_at",
)
JSON_FIELDS = frozenset({"request_content", "metadata", "options", "result", "error"})
INT_FIELDS = frozenset({"priority", "attempts", "max_retries", "auto_retries", "budget_from"})
TIME_FIELDS = frozenset({"created_at", "started_at", "finished_at", "updated_at", "deadline_at"})
FLOAT_FIELDS = TIME_FIELDS | {"retry_at", "enqueued_at", "lease_until", "timeout_s"}


def iso(ts: float | None) -> str | None:
    """Epoch seconds → `2026-11-24T17:00:00.123456Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode(raw: dict[str, str]) -> dict[str, Any]:
    """The Redis hash (strings) → typed values, internal fields included."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value == "":
            out[key] = None
        elif key in JSON_FIELDS:
            out[key] = json.loads(value)
        elif key in INT_FIELDS:
            out[key] = int(value)
        elif key in FLOAT_FIELDS:
            out[key] = float(value)
        else:
            out[key] = value
    return out


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The SPEC §3 task record: exactly the public fields, times as ISO strings."""
    return {f: iso(record.get(f)) if f in TIME_FIELDS else record.get(f) for f in PUBLIC_FIELDS}
