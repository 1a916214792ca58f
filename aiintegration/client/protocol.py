"""What the REST and broker clients share, with no I/O: the retry policy, the one function that
maps an HTTP error answer onto the error tree, and what a finished task or answer means.

Status decides the class (what a caller can catch on), the body's `code` is kept as `.code`::

    401 Unauthorized   404 NotFound   409 Conflict   400/422 ValidationError   413 PayloadTooLarge
    429 RateLimited (retry_after from Retry-After)   502/503/504 and transport errors ServiceUnavailable
    anything else      AIIntegrationError with the answer's code and status
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiintegration.errors import (
    AIIntegrationError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PermanentError,
    RateLimited,
    ServiceUnavailable,
    TaskCancelled,
    TransientError,
    Unauthorized,
    ValidationError,
    error_class,
)

Record = dict[str, Any]

TASK_ENDS = frozenset({"task.succeeded", "task.cancelled", "task.dead_lettered"})
SESSION_ENDS = frozenset({"chat.session_closed"})
FINISHED = frozenset({"succeeded", "cancelled", "dead_lettered"})

BY_STATUS: dict[int, type[AIIntegrationError]] = {
    400: ValidationError, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: ValidationError, 429: RateLimited, 502: ServiceUnavailable, 503: ServiceUnavailable,
    504: ServiceUnavailable,
}


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How calls are retried on connection errors and 502/503/504 (stamina's jittered
    exponential backoff). `attempts` counts the first try; `timeout` caps one call's retries.
    Tests turn the waits off with `stamina.set_testing(True)`."""

    attempts: int = 5
    timeout: float = 30.0
    wait_initial: float = 0.2
    wait_max: float = 5.0
    wait_jitter: float = 1.0

    def stamina_kwargs(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "timeout": self.timeout, "wait_initial": self.wait_initial,
                "wait_max": self.wait_max, "wait_jitter": self.wait_jitter}


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from us, and the backoff covers it


def error_from_answer(status: int, body: bytes, retry_after: str | None = None) -> AIIntegrationError:
    """An error answer of our API (`{"error": {"code", "message", "details"}}`, or whatever a
    proxy in front of it sent) as the error to raise."""
    try:
        error = json.loads(body)["error"]
        code, message, details = str(error["code"]), str(error["message"]), dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        code, message, details = f"http_{status}", body[:300].decode(errors="replace") or f"HTTP {status}", {}
    cls = BY_STATUS.get(status, AIIntegrationError)
    if issubclass(cls, TransientError):
        exc: AIIntegrationError = cls(message, details=details, retry_after=_seconds(retry_after))
    else:
        exc = cls(message, details=details)
    exc.code, exc.http_status = code, status
    return exc


def unreachable(url: str, cause: Exception, *, sent: bool) -> ServiceUnavailable:
    """A transport failure as the error tree sees it. `request_sent` False: the request never
    left (connect failed), so even a call that is not idempotent may be sent again."""
    return ServiceUnavailable(f"{type(cause).__name__} talking to {url}: {cause}", details={"request_sent": sent})


def retry_on(*, idempotent: bool) -> Callable[[Exception], bool | float]:
    """stamina's `on` hook: True (back off and retry), a float (retry after that many
    seconds: the answer's Retry-After), or False."""

    def hook(exc: Exception) -> bool | float:
        if not isinstance(exc, ServiceUnavailable):
            return False
        if not idempotent and exc.details.get("request_sent") is not False:
            return False
        return exc.retry_after if exc.retry_after is not None else True

    return hook


class Settle:
    """For a state change retried after its request may already have been applied (sent, and
    the answer lost): a 409 then means "already done", and the current state is the answer."""

    def __init__(self) -> None:
        self.maybe_applied = False

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, ServiceUnavailable) and exc.details.get("request_sent") is True:
            self.maybe_applied = True

    def absorbs(self, exc: Exception) -> bool:
        return isinstance(exc, Conflict) and self.maybe_applied


def submission(task_type: str, request_content: dict[str, Any], requested_by: str, priority: int,
               metadata: dict[str, Any] | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """The body of POST /v1/tasks (and the kwargs of the create task by name)."""
    return {"task_type": task_type, "request_content": request_content, "requested_by": requested_by,
            "priority": priority, "metadata": metadata or {}, "options": options or {}}


def task_failure(record: Record, event: dict[str, Any] | None = None) -> AIIntegrationError:
    """The error a finished, unsuccessful task stands for: the class the worker raised (named
    by the record's `error.class`), with the record's code and the provider's message.
    `details` holds `task_id`, `status` and the whole record as `task`."""
    error = record.get("error") or {}
    task_id, status = record.get("id"), record.get("status")
    details = {"task_id": task_id, "status": status, "task": record}
    if status == "cancelled":
        reason = (event or {}).get("reason")
        exc: AIIntegrationError = TaskCancelled(f"task {task_id} was cancelled" + (f": {reason}" if reason else ""),
                                                details=details)
        return exc
    cls = error_class(error.get("class")) or error_class(error.get("code")) or (
        TransientError if error.get("retryable") else PermanentError)
    exc = cls(str(error.get("message") or f"task {task_id} is {status}"), provider=error.get("provider"),
              details=details)
    exc.code = str(error.get("code") or cls.code)
    return exc


def outcome(record: Record, event: dict[str, Any] | None = None) -> Record:
    """A finished task's record if it succeeded; raises what it failed with otherwise."""
    if record.get("status") == "succeeded":
        return record
    raise task_failure(record, event)


def answer_failure(data: dict[str, Any]) -> AIIntegrationError:
    """`chat.response.incomplete` (reason: `cancelled`, `timed_out` or the error class) as an error."""
    reason = str(data.get("reason") or "incomplete")
    cls = error_class(reason) or AIIntegrationError
    exc = cls(f"the answer to message {data.get('message_id')} stopped: {reason}", details={
        "message_id": data.get("message_id"), "task_id": data.get("task_id"), "attempt": data.get("attempt")})
    exc.code = cls.code if cls is not AIIntegrationError else reason
    return exc


class Answer:
    """One chat answer as its session feed tells it, with no I/O (the blocking and the async
    replies feed it the same items): `take(item)` returns a delta's text, or None when the item
    is not this answer's or ends it (`completed` is then set); raises when it ended otherwise."""

    def __init__(self, message_id: str, task_id: str) -> None:
        self.message_id, self.task_id = message_id, task_id
        self.text = ""
        self.completed: dict[str, Any] | None = None
        self.last_event_id: str | None = None  # of `chat.response.completed`: the session reads on from here

    def take(self, item: Any) -> str | None:
        data = item["data"] if isinstance(item["data"], dict) else {}
        if item["event"] == "chat.session_closed":
            raise Conflict("the chat session was closed before the answer completed",
                           details={"message_id": self.message_id, "task_id": self.task_id})
        if data.get("message_id") != self.message_id:
            return None
        if item["event"] == "chat.response.delta":
            self.text += data["text"]
            return str(data["text"])
        if item["event"] == "chat.response.completed":
            self.completed, self.text = data, data.get("text") or self.text
            self.last_event_id = item["id"]
        elif item["event"] == "chat.response.incomplete":
            raise answer_failure(data)
        return None

    def failed(self, record: Record) -> AIIntegrationError | None:
        """On a heartbeat, the answer task's record: its error if it finished without succeeding."""
        if record["status"] in FINISHED and record["status"] != "succeeded":
            return task_failure(record)
        return None


class AnswerView:
    """A reply's view of its `Answer`: `text` so far, `completed` (the final event's data)."""

    answer: Answer

    @property
    def message_id(self) -> str:
        return self.answer.message_id

    @property
    def task_id(self) -> str:
        return self.answer.task_id

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def completed(self) -> dict[str, Any] | None:
        return self.answer.completed
