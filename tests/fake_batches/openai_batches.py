"""OpenAI's Files + Batches APIs on the fake provider (`/v1/files`, `/v1/batches`; endpoint
/v1/chat/completions only). A batch is validating for the first 10 % of its delay, in_progress
(item i of n answered at about 10 % + 80 %·(i+1)/n), finalizing for the last 10 %, then
completed — or failed (validation), expired (`expire_after`), cancelling → cancelled."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tests.fake_batches.common import (
    DAY_S,
    Answer,
    BatchBehaviour,
    Batches,
    BatchLimits,
    BatchRecord,
    openai_error,
    page,
)


@dataclass
class _OpenAIBatch:
    obj: dict[str, Any]
    items: list[tuple[str, dict[str, Any]]]
    problems: list[dict[str, Any]]
    behaviour: BatchBehaviour
    started: float
    record: BatchRecord
    done: int = 0
    ok: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    cancel_at: float | None = None


class OpenAIBatches(Batches):
    """`/v1/files` and `/v1/batches` (endpoint /v1/chat/completions only)."""

    def __init__(self, answer: Answer, *, seed: int = 7, clock: Callable[[], float] = time.monotonic,
                 records: list[BatchRecord] | None = None):
        super().__init__(answer, seed=seed, clock=clock, records=records)
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, _OpenAIBatch] = {}

    # -- files
    def upload(self, purpose: str, filename: str, content: bytes, limits: BatchLimits) -> tuple[int, dict[str, Any]]:
        if len(content) > limits.openai_file_max_bytes:
            return 400, openai_error("File is too large.")
        if purpose not in ("batch", "assistants", "fine-tune", "vision", "user_data", "evals"):
            return 400, openai_error(f"Invalid value for 'purpose': '{purpose}'.", param="purpose")
        return 200, self._store(purpose, filename, content)

    def _store(self, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        meta = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed",
                "expires_at": int(time.time()) + 30 * DAY_S if purpose.startswith("batch") else None,
                "status_details": None}
        with self._lock:
            self.files[meta["id"]] = (meta, content)
        return meta

    def file(self, file_id: str) -> tuple[int, dict[str, Any]]:
        found = self.files.get(file_id)
        return (200, found[0]) if found else (404, openai_error(f"No such File object: {file_id}", status=404))

    def content(self, file_id: str) -> tuple[int, dict[str, Any] | bytes]:
        found = self.files.get(file_id)
        return (200, found[1]) if found else (404, openai_error(f"No such File object: {file_id}", status=404))

    def delete_file(self, file_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            found = self.files.pop(file_id, None)
        if not found:
            return 404, openai_error(f"No such File object: {file_id}", status=404)
        return 200, {"id": file_id, "object": "file", "deleted": True}

    # -- batches
    def create(self, body: dict[str, Any], behaviour: BatchBehaviour, limits: BatchLimits) -> tuple[int, dict[str, Any]]:
        found = self.files.get(str(body.get("input_file_id")))
        if found is None:
            return 404, openai_error(f"No such File object: {body.get('input_file_id')}", status=404)
        if found[0]["purpose"] != "batch":
            return 400, openai_error("The input file must be uploaded with purpose 'batch'.", param="input_file_id")
        if body.get("endpoint") != "/v1/chat/completions":
            return 400, openai_error(f"Unsupported endpoint by this fake: {body.get('endpoint')}", param="endpoint")
        if body.get("completion_window") != "24h":
            return 400, openai_error("Invalid 'completion_window': only '24h' is supported.", param="completion_window")
        items, problems, model = self._read_input(found[1], body["endpoint"], limits)
        now = int(time.time())
        obj = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body["endpoint"],
               "model": model, "errors": None, "input_file_id": found[0]["id"], "completion_window": "24h",
               "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
               "in_progress_at": None, "expires_at": now + DAY_S, "finalizing_at": None, "completed_at": None,
               "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
               "request_counts": {"total": 0, "completed": 0, "failed": 0}, "usage": None,
               "metadata": body.get("metadata")}
        record = BatchRecord("openai", obj["id"], [cid for cid, _ in items], "validating")
        with self._lock:
            self.batches[obj["id"]] = _OpenAIBatch(obj, items, problems, replace(behaviour), self._clock(), record)
            self.records.append(record)
        return 200, dict(obj)

    def _read_input(self, content: bytes, endpoint: str,
                    limits: BatchLimits) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]], str | None]:
        """The lines, and what validation will fail the batch with (OpenAI's BatchError shape)."""
        def problem(code: str, message: str, line: int | None = None) -> dict[str, Any]:
            return {"code": code, "message": message, "line": line, "param": None}

        lines = [line for line in content.decode("utf-8", "replace").splitlines() if line.strip()]
        if len(content) > limits.openai_max_bytes:
            return [], [problem("file_too_large", f"The batch input file is larger than the {limits.openai_max_bytes} "
                                "maximum. Please try again with a smaller batch.")], None
        if not lines:
            return [], [problem("empty_file", "The batch input file is empty.")], None
        if len(lines) > limits.openai_max_requests:
            return [], [problem("too_many_tasks", f"The batch input file has {len(lines)} requests, more than the "
                                f"{limits.openai_max_requests} maximum.")], None
        items, problems, seen, model = [], [], set(), None
        for number, line in enumerate(lines, start=1):
            try:
                request = json.loads(line)
                custom_id, request_body = str(request["custom_id"]), request["body"]
            except (ValueError, KeyError, TypeError):
                problems.append(problem("invalid_json_line", "This line is not parseable as valid JSON.", number))
                continue
            model = model or request_body.get("model")
            if custom_id in seen:
                problems.append(problem("duplicate_custom_id", "The custom_id for this request is a duplicate of "
                                        "another request. The custom_id parameter must be unique for each request "
                                        "in a batch.", number))
            elif request.get("url") != endpoint:
                problems.append(problem("url_mismatch", "The provided URL for this request does not match the "
                                        "batch endpoint.", number))
            elif request_body.get("model") != model:
                problems.append(problem("model_mismatch", "The provided model for this request does not match "
                                        "the model of the other requests in the batch.", number))
            seen.add(custom_id)
            items.append((custom_id, request_body))
        return items, problems[:10], model

    def get(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, openai_error(f"No batch found with id '{batch_id}'.", status=404)
            self._advance(batch)
            return 200, dict(batch.obj)

    def cancel(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, openai_error(f"No batch found with id '{batch_id}'.", status=404)
            self._advance(batch)
            if batch.obj["status"] not in ("validating", "in_progress", "finalizing"):
                return 409, openai_error(f"Cannot cancel a batch with status '{batch.obj['status']}'.", status=409)
            batch.cancel_at = self._clock()
            self._set(batch, "cancelling")
            return 200, dict(batch.obj)

    def list(self, after: str | None, limit: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            for batch in self.batches.values():
                self._advance(batch)
            newest = [dict(b.obj) for b in reversed(self.batches.values())]
        chosen, more = page(newest, lambda b: b["id"], after=after, before=None, limit=max(1, min(limit, 100)))
        return 200, {"object": "list", "data": chosen, "first_id": chosen[0]["id"] if chosen else None,
                     "last_id": chosen[-1]["id"] if chosen else None, "has_more": more}

    def advance_all(self) -> None:
        with self._lock:
            for batch in self.batches.values():
                self._advance(batch)

    def _set(self, batch: _OpenAIBatch, status: str) -> None:
        batch.obj["status"] = batch.record.status = status
        batch.obj[f"{status}_at"] = int(time.time())

    def _advance(self, batch: _OpenAIBatch) -> None:
        obj, delay, n = batch.obj, batch.behaviour.delay_s, len(batch.items)
        elapsed = self._clock() - batch.started
        if obj["status"] == "validating" and batch.cancel_at is None and elapsed >= 0.1 * delay:
            if batch.problems:
                obj["errors"] = {"object": "list", "data": batch.problems}
                self._set(batch, "failed")
                return
            obj["request_counts"]["total"] = n
            self._set(batch, "in_progress")
        if obj["status"] == "in_progress":
            due = n if elapsed >= 0.9 * delay else int(n * max(0.0, elapsed - 0.1 * delay) / (0.8 * delay or 1))
            if batch.behaviour.expire_after is not None:
                due = min(due, batch.behaviour.expire_after)
            while batch.done < due:
                self._answer_item(batch, *batch.items[batch.done])
                batch.done += 1
            if elapsed >= 0.9 * delay and batch.done == n:
                self._set(batch, "finalizing")
            elif elapsed >= delay:
                for custom_id, _ in batch.items[batch.done:]:
                    batch.failed.append(self._line(custom_id, None, {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}))
                    batch.record.outcomes[custom_id] = "expired"
                    obj["request_counts"]["failed"] += 1
                self._finish(batch, "expired")
        if obj["status"] == "finalizing" and elapsed >= delay:
            self._finish(batch, "completed")
        if obj["status"] == "cancelling" and self._clock() >= (batch.cancel_at or 0) + batch.behaviour.cancel_delay_s:
            self._finish(batch, "cancelled")  # items never answered appear in neither file

    def _answer_item(self, batch: _OpenAIBatch, custom_id: str, body: dict[str, Any]) -> None:
        fate = self._fate(batch.behaviour, custom_id, body)
        counts = batch.obj["request_counts"]
        if fate is None:
            answer = self._answer(body)
            batch.ok.append(self._line(custom_id, {"status_code": 200, "request_id": uuid.uuid4().hex, "body": answer}))
            batch.record.outcomes[custom_id] = "succeeded"
            counts["completed"] += 1
            self._add_usage(batch, answer.get("usage") or {})
        else:
            status, message = fate
            batch.failed.append(self._line(custom_id, {"status_code": status, "request_id": uuid.uuid4().hex,
                                                       "body": openai_error(message, status=status)}))
            batch.record.outcomes[custom_id] = "errored"
            counts["failed"] += 1

    @staticmethod
    def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response,
                "error": error}

    @staticmethod
    def _add_usage(batch: _OpenAIBatch, usage: dict[str, Any]) -> None:
        total = batch.obj["usage"] or {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                                       "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                                       "total_tokens": 0}
        total["input_tokens"] += usage.get("prompt_tokens", 0)
        total["input_tokens_details"]["cached_tokens"] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        total["output_tokens"] += usage.get("completion_tokens", 0)
        total["total_tokens"] = total["input_tokens"] + total["output_tokens"]
        batch.obj["usage"] = total

    def _finish(self, batch: _OpenAIBatch, status: str) -> None:
        for key, lines in (("output_file_id", batch.ok), ("error_file_id", batch.failed)):
            if lines:
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                kind = "output" if key == "output_file_id" else "error"
                batch.obj[key] = self._store("batch_output", f"{batch.obj['id']}_{kind}.jsonl", data)["id"]
        self._set(batch, status)
