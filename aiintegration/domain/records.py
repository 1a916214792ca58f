"""The task record: one typed `TaskRecord` from the store up, how it is laid out in its Redis
hash, and the public shape callers see (SPEC §3 "Task record")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from aiintegration.domain.auth import DEFAULT_TENANT
from aiintegration.domain.routing import Route
from aiintegration.domain.states import TaskStatus

Json = dict[str, Any]
HashValue = str | int | float

PUBLIC_FIELDS = (
    "id", "task_type", "status", "priority", "tenant", "requested_by", "request_content", "metadata", "options",
    "attempts", "max_retries", "provider", "worker_id", "result", "error",
    "created_at", "started_at", "finished_at", "updated_at", "deadline_at",
)
TIME_FIELDS = frozenset({"created_at", "started_at", "finished_at", "updated_at", "deadline_at"})


def iso(ts: float | None) -> str | None:
    """Epoch seconds → `2026-11-24T17:00:00.123456Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(value: Any) -> str:
    """Compact JSON, as every value is stored."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's `options`, defaults filled in (validated in `domain/submission.py`)."""

    provider: str | None = None
    timeout_s: float = 300.0
    max_retries: int = 3
    retry_on_timeout: bool = True
    stream: bool = False
    callback_url: str | None = None
    batch: bool | None = None  # the batch lane: true / false, or None to let AII_BATCH_POLICY decide

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> Json:
        # Flat fields: no `asdict`, whose deep copy was most of a record's encoding cost.
        return {name: getattr(self, name) for name in _OPTION_FIELDS}


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A generation task as stored (`{p}:task:{id}`) and handed around. Times are epoch
    seconds; `public()` is what callers see."""

    id: str
    task_type: str
    status: TaskStatus
    requested_by: str
    request_content: Json
    priority: int = 5
    tenant: str = DEFAULT_TENANT
    metadata: Json = field(default_factory=dict)
    options: TaskOptions = TaskOptions()
    attempts: int = 0
    provider: str | None = None
    worker_id: str | None = None
    result: Json | None = None
    error: Json | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    # internal: not in the public shape
    enqueued_at: float | None = None  # when its current broker message was sent
    retry_at: float | None = None
    lease_until: float | None = None
    run_id: str | None = None  # the attempt that owns a running task
    idempotency_key: str | None = None
    auto_retries: int = 0  # automatic DLQ retries so far
    budget_from: int = 0  # attempts before the last manual retry: the retry budget starts there
    cost: float | None = None
    cancel_reason: str | None = None
    # a chat_completion task answering a chat message: set by SendChatMessage only, never by callers
    chat_session_id: str | None = None
    chat_message_id: str | None = None
    trace_context: str | None = None  # the W3C traceparent of the request that created it (tracing on)
    throttled_at: float | None = None  # first refused a provider's quota, for the attempt waiting now
    throttled_in: str | None = None  # "<provider>|<bucket>": the quota wait line it holds a place in
    # what was reserved against the tenant's budget at submission (released when it ends)
    budget_cost: float | None = None
    budget_tokens: int | None = None
    budget_day: str | None = None
    budget_month: str | None = None
    # the batch lane (commands/batches.py): `lane` is "batch" while the task belongs to it, and
    # `lane_group` the provider|model it waits for; `batch_ref` names the lane batch holding it
    # while that batch is being submitted (a submitted batch owns its tasks through `run_id`)
    lane: str | None = None
    lane_group: str | None = None
    batch_ref: str | None = None

    @property
    def max_retries(self) -> int:
        return self.options.max_retries

    @property
    def timeout_s(self) -> float:
        return self.options.timeout_s

    @property
    def pinned_provider(self) -> str | None:
        return self.options.provider

    @property
    def route(self) -> Route:
        return Route(self.task_type, self.options.provider)

    @property
    def retries_left(self) -> int:
        """Automatic retries still allowed after the current attempt failed; a manual retry
        or a DLQ replay starts a fresh budget."""
        used = self.attempts - self.budget_from - 1
        return self.max_retries - used

    def with_changes(self, **changes: Any) -> TaskRecord:
        return replace(self, **changes)

    # the Redis hash ------------------------------------------------------------------------
    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> TaskRecord:
        """The stored hash (all strings; a missing or empty field is unset) → a record.
        Fields it does not know (written by a newer version, or the store's own) are ignored."""
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = _FIELD_KINDS.get(name)
            if kind is None or value == "" or name in _DERIVED:
                continue
            values[name] = kind(value)
        return cls(**values)

    def to_hash(self) -> dict[str, HashValue]:
        """Every field as stored; `max_retries` and `timeout_s` are kept beside the options
        because the store's scripts read them."""
        out = {name: encode_field(getattr(self, name)) for name in _FIELD_KINDS if name not in _DERIVED}
        out["max_retries"], out["timeout_s"] = self.max_retries, self.timeout_s
        return out

    def public(self) -> Json:
        """The SPEC §3 record: exactly the public fields, times as ISO strings."""
        out: Json = {}
        for name in PUBLIC_FIELDS:
            value = getattr(self, name)
            if name in TIME_FIELDS:
                value = iso(value)
            elif name == "options":
                value = value.to_dict()
            elif name == "status":
                value = str(value)
            out[name] = value
        return out


_OPTION_FIELDS = tuple(f.name for f in fields(TaskOptions))


def encode_field(value: Any) -> HashValue:
    """One value as its hash field holds it: JSON for objects, '' for unset."""
    if value is None:
        return ""
    if isinstance(value, TaskOptions):
        return dumps(value.to_dict())
    if isinstance(value, dict | list):
        return dumps(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, TaskStatus):
        return str(value)
    if isinstance(value, str | int | float):
        return value
    raise TypeError(f"cannot store a {type(value).__name__}")


def _options(raw: str) -> TaskOptions:
    return TaskOptions.from_dict(json.loads(raw))


_FIELD_KINDS: dict[str, Any] = {
    "id": str, "task_type": str, "status": TaskStatus, "requested_by": str, "request_content": json.loads,
    "priority": int, "metadata": json.loads, "options": _options, "attempts": int, "provider": str,
    "worker_id": str, "result": json.loads, "error": json.loads, "created_at": float, "started_at": float,
    "finished_at": float, "updated_at": float, "deadline_at": float, "enqueued_at": float, "retry_at": float,
    "lease_until": float, "run_id": str, "idempotency_key": str, "auto_retries": int, "budget_from": int,
    "cost": float, "cancel_reason": str, "tenant": str, "chat_session_id": str, "chat_message_id": str,
    "trace_context": str, "throttled_at": float, "throttled_in": str,
    "budget_cost": float, "budget_tokens": int, "budget_day": str, "budget_month": str,
    "lane": str, "lane_group": str, "batch_ref": str,
    "max_retries": int, "timeout_s": float,  # derived from the options; read back from them
}
_DERIVED = frozenset({"max_retries", "timeout_s"})
