"""Anthropic's Message Batches API on the fake provider (`/v1/messages/batches`): in_progress
(item i of n answered at about delay·(i+1)/n, counts stay `processing` until the end), then
ended — with the items `expire_after` left `expired`, or canceling → ended with the rest `canceled`;
the results JSONL at `results_url`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tests.fake_batches.common import (
    ANTHROPIC_ID,
    DAY_S,
    Answer,
    BatchBehaviour,
    Batches,
    BatchLimits,
    BatchRecord,
    anthropic_error,
    page,
    rfc3339_ms,
)


@dataclass
class _AnthropicBatch:
    obj: dict[str, Any]
    items: list[tuple[str, dict[str, Any]]]
    behaviour: BatchBehaviour
    started: float
    record: BatchRecord
    results: list[dict[str, Any]] = field(default_factory=list)
    cancel_at: float | None = None


class AnthropicBatches(Batches):
    """`/v1/messages/batches`: create, retrieve, list, cancel, delete, and the results JSONL."""

    def __init__(self, answer: Answer, *, seed: int = 8, clock: Callable[[], float] = time.monotonic,
                 records: list[BatchRecord] | None = None):
        super().__init__(answer, seed=seed, clock=clock, records=records)
        self.batches: dict[str, _AnthropicBatch] = {}

    def create(self, body: dict[str, Any], behaviour: BatchBehaviour, limits: BatchLimits,
               base_url: str) -> tuple[int, dict[str, Any]]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, anthropic_error("requests: at least one request is required")
        if len(requests) > limits.anthropic_max_requests:
            return 400, anthropic_error(f"requests: a batch holds at most {limits.anthropic_max_requests} "
                                        f"requests, got {len(requests)}")
        seen: set[str] = set()
        for index, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not ANTHROPIC_ID.match(custom_id):
                return 400, anthropic_error(f"requests.{index}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if custom_id in seen:
                return 400, anthropic_error(f"requests.{index}.custom_id: duplicate custom_id '{custom_id}'")
            if not isinstance(request.get("params"), dict):
                return 400, anthropic_error(f"requests.{index}.params: Field required")
            seen.add(custom_id)
        now = time.time()
        obj = {"id": f"msgbatch_{uuid.uuid4().hex[:24]}", "type": "message_batch", "processing_status": "in_progress",
               "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                  "expired": 0},
               "ended_at": None, "created_at": rfc3339_ms(now), "expires_at": rfc3339_ms(now + DAY_S),
               "archived_at": None, "cancel_initiated_at": None, "results_url": None, "_results_base": base_url}
        record = BatchRecord("anthropic", obj["id"], [r["custom_id"] for r in requests], "in_progress")
        with self._lock:
            self.batches[obj["id"]] = _AnthropicBatch(obj, [(r["custom_id"], r["params"]) for r in requests],
                                                      replace(behaviour), self._clock(), record)
            self.records.append(record)
        return 200, self._public(obj)

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def get(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, anthropic_error(f"message batch {batch_id} not found", status=404)
            self._advance(batch)
            return 200, self._public(batch.obj)

    def cancel(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, anthropic_error(f"message batch {batch_id} not found", status=404)
            self._advance(batch)
            if batch.obj["processing_status"] == "in_progress":
                batch.cancel_at = self._clock()
                batch.obj["processing_status"] = batch.record.status = "canceling"
                batch.obj["cancel_initiated_at"] = rfc3339_ms(time.time())
                self._advance(batch)
            return 200, self._public(batch.obj)

    def delete(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, anthropic_error(f"message batch {batch_id} not found", status=404)
            self._advance(batch)
            if batch.obj["processing_status"] != "ended":
                return 400, anthropic_error("a message batch can only be deleted once it has ended; cancel it first")
            del self.batches[batch_id]
        return 200, {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> tuple[int, dict[str, Any] | bytes]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, anthropic_error(f"message batch {batch_id} not found", status=404)
            self._advance(batch)
            if batch.obj["processing_status"] != "ended":
                return 404, anthropic_error(f"message batch {batch_id} has not ended yet: no results", status=404)
            return 200, "".join(json.dumps(line) + "\n" for line in batch.results).encode()

    def list(self, after_id: str | None, before_id: str | None, limit: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            for batch in self.batches.values():
                self._advance(batch)
            newest = [self._public(b.obj) for b in reversed(self.batches.values())]
        chosen, more = page(newest, lambda b: b["id"], after=after_id, before=before_id,
                           limit=max(1, min(limit, 1000)))
        return 200, {"data": chosen, "has_more": more, "first_id": chosen[0]["id"] if chosen else None,
                     "last_id": chosen[-1]["id"] if chosen else None}

    def advance_all(self) -> None:
        with self._lock:
            for batch in self.batches.values():
                self._advance(batch)

    def _advance(self, batch: _AnthropicBatch) -> None:
        obj, behaviour, n = batch.obj, batch.behaviour, len(batch.items)
        if obj["processing_status"] == "ended":
            return
        now = self._clock()
        elapsed = (batch.cancel_at if batch.cancel_at is not None else now) - batch.started
        due = n if elapsed >= behaviour.delay_s else int(n * elapsed / (behaviour.delay_s or 1))
        if behaviour.expire_after is not None:
            due = min(due, behaviour.expire_after)
        while len(batch.results) < due:
            custom_id, params = batch.items[len(batch.results)]
            fate = self._fate(behaviour, custom_id, params)
            if fate is None:
                result = {"type": "succeeded", "message": self._answer(params)}
            else:
                result = {"type": "errored", "error": anthropic_error(fate[1], status=fate[0])}
            batch.results.append({"custom_id": custom_id, "result": result})
            batch.record.outcomes[custom_id] = "succeeded" if fate is None else "errored"
        if batch.cancel_at is not None:
            if now >= batch.cancel_at + behaviour.cancel_delay_s:
                self._end(batch, "canceled")
        elif elapsed >= behaviour.delay_s:
            self._end(batch, "expired")  # only items left unanswered by expire_after

    def _end(self, batch: _AnthropicBatch, leftover: str) -> None:
        for custom_id, _ in batch.items[len(batch.results):]:
            batch.results.append({"custom_id": custom_id, "result": {"type": leftover}})
            batch.record.outcomes[custom_id] = leftover
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in batch.results:
            counts[line["result"]["type"]] += 1
        obj = batch.obj
        obj["request_counts"] = counts
        obj["processing_status"] = batch.record.status = "ended"
        obj["ended_at"] = rfc3339_ms(time.time())
        obj["results_url"] = f"{obj['_results_base']}/v1/messages/batches/{obj['id']}/results"
