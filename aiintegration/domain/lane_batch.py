"""One batch of the batch lane as we keep it (`LaneBatch`), its states, and what operators
see of it (`GET /v1/batches`). The provider's own batch is `provider_id`; ours exists first,
so that the intent to submit is on record before the provider hears of it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from aiintegration.domain.records import HashValue, dumps, iso


class BatchStatus(StrEnum):
    PREPARING = "preparing"  # its tasks were taken from the lane; nothing billable was sent yet
    SUBMITTING = "submitting"  # intent: the provider's create call is being made; reconcile before another
    SUBMITTED = "submitted"  # the provider has it; its tasks run
    APPLYING = "applying"  # it ended at the provider; results are being applied to the tasks
    ENDED = "ended"  # every task has had its outcome applied
    ABANDONED = "abandoned"  # never reached the provider: its tasks went back to the lane
    REFUSED = "refused"  # the provider refused it whole: its tasks run in realtime


UNSENT = frozenset({BatchStatus.PREPARING, BatchStatus.SUBMITTING})  # no provider id on record yet
POLLED = frozenset({BatchStatus.SUBMITTED, BatchStatus.APPLYING})  # at the provider, or its results being applied
COUNT_KEYS = ("total", "succeeded", "failed", "requeued", "discarded")


def final_counts(total: int, counts: Mapping[str, int]) -> dict[str, int]:
    """An ended batch's `counts`: every COUNT_KEY, `total` its size."""
    return {k: total if k == "total" else counts.get(k, 0) for k in COUNT_KEYS}


@dataclass(frozen=True, slots=True)
class LaneBatch:
    """Our record of one provider batch (`{p}:lane:batch:{id}`); times are epoch seconds."""

    id: str
    provider: str
    kind: str
    model: str
    status: BatchStatus
    tasks: tuple[str, ...] = ()
    created_at: float = 0.0
    intent_at: float | None = None  # when the current external step began (the reconcile window)
    submitted_at: float | None = None
    ended_at: float | None = None
    provider_id: str | None = None
    provider_status: str | None = None
    file_id: str | None = None  # OpenAI: the uploaded input file
    started: bool = False  # every task was moved to running (task.batched emitted)
    cancel_requested: bool = False  # every task was cancelled: cancelled at the provider
    counts: dict[str, int] = field(default_factory=dict)  # COUNT_KEYS: what became of its tasks
    provider_counts: dict[str, int] = field(default_factory=dict)  # as the provider reports them
    error: str | None = None

    def with_changes(self, **changes: Any) -> LaneBatch:
        return replace(self, **changes)

    def to_hash(self) -> dict[str, HashValue]:
        out: dict[str, HashValue] = {}
        for name, value in asdict(self).items():
            if value is None:
                out[name] = ""
            elif isinstance(value, bool):
                out[name] = int(value)
            elif isinstance(value, dict | list | tuple):
                out[name] = dumps(list(value) if isinstance(value, tuple) else value)
            else:
                out[name] = str(value) if isinstance(value, BatchStatus) else value
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> LaneBatch:
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = raw.get(f.name, "")
            if value == "":
                continue
            values[f.name] = _KINDS[f.name](value)
        return cls(**values)

    def public(self, now: float) -> dict[str, Any]:
        """What operators see: the provider's batch id once it has one (ours before)."""
        return {
            "id": self.provider_id or self.id, "lane_id": self.id, "provider": self.provider, "model": self.model,
            "status": str(self.status), "provider_status": self.provider_status,
            "counts": {k: int(self.counts.get(k, len(self.tasks) if k == "total" else 0)) for k in COUNT_KEYS},
            "provider_counts": self.provider_counts, "created_at": iso(self.created_at),
            "submitted_at": iso(self.submitted_at), "ended_at": iso(self.ended_at),
            "age_s": round(max(0.0, (self.ended_at or now) - self.created_at), 3), "error": self.error,
        }


def _flag(value: str) -> bool:
    return value not in ("0", "False", "false")


def _tasks(value: str) -> tuple[str, ...]:
    return tuple(json.loads(value))


_KINDS: dict[str, Any] = {
    "id": str, "provider": str, "kind": str, "model": str, "status": BatchStatus, "tasks": _tasks,
    "created_at": float, "intent_at": float, "submitted_at": float, "ended_at": float, "provider_id": str,
    "provider_status": str, "file_id": str, "started": _flag, "cancel_requested": _flag, "counts": json.loads,
    "provider_counts": json.loads, "error": str,
}
