"""What both fake batch APIs share: how the next batches run (`BatchBehaviour`), the real
APIs' limits (`BatchLimits`), what a test reads (`BatchRecord`), the providers' error bodies,
and the rule that decides an item's fate."""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]  # a request body -> the realtime answer body
FailRule = dict[str, "int | tuple[int, str]"] | Callable[[str, dict[str, Any]], "int | tuple[int, str] | None"]
DAY_S = 24 * 3600
MB = 1024 * 1024


@dataclass
class BatchBehaviour:
    """How the next batches run (each batch keeps a copy of the one in force when created)."""

    delay_s: float = 0.5  # a batch ends this long after it was created
    fail: FailRule = field(default_factory=dict)  # custom_id -> status | (status, message), or a predicate
    fail_rate: dict[int, float] = field(default_factory=dict)  # e.g. {400: 0.1, 500: 0.1}, per item
    expire_after: int | None = None  # expire at the end instead of completing, after answering this many items
    cancel_delay_s: float = 0.0  # cancelling / canceling lasts this long


@dataclass
class BatchLimits:
    """The real APIs' limits (lower them in a test to see the error without 200 MB of upload)."""

    openai_max_requests: int = 50_000
    openai_max_bytes: int = 200 * MB  # 209715200: the batch input file
    openai_file_max_bytes: int = 512 * MB  # any upload
    anthropic_max_requests: int = 100_000
    anthropic_max_bytes: int = 256 * MB  # the create request's body


@dataclass
class BatchRecord:
    """What a test reads: one created batch, its custom_ids and each item's outcome so far."""

    provider: str  # "openai" | "anthropic"
    id: str
    custom_ids: list[str]
    status: str = ""  # the provider's own status word (OpenAI status / Anthropic processing_status)
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id -> succeeded|errored|expired|canceled


ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                          500: "api_error", 529: "overloaded_error"}
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def openai_error(message: str, *, status: int = 400, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error(message: str, *, status: int = 400) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}


def rfc3339_ms(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_multipart(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body (what the SDKs' httpx sends)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    fields = {}
    for part in data.split(b"--" + match.group(1).encode())[1:-1]:
        head, _, value = part.partition(b"\r\n\r\n")
        text = head.decode("utf-8", "replace")
        name = re.search(r'[;\s]name="([^"]*)"', text)
        filename = re.search(r'filename="([^"]*)"', text)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, value.removesuffix(b"\r\n"))
    return fields


def page(items: list[Any], key: Callable[[Any], str], *, after: str | None, before: str | None,
          limit: int) -> tuple[list[Any], bool]:
    """Newest-first `items` after (older than) / before (newer than) a cursor id."""
    ids = [key(item) for item in items]
    if after in ids:
        chosen = items[ids.index(after) + 1:]
        return chosen[:limit], len(chosen) > limit
    if before in ids:
        chosen = items[:ids.index(before)]
        return chosen[-limit:], len(chosen) > limit
    return items[:limit], len(items) > limit


class Batches:
    """What both providers share: the rules for an item's fate, the clock, the records."""

    def __init__(self, answer: Answer, *, seed: int, clock: Callable[[], float], records: list[BatchRecord] | None):
        self._answer = answer
        self._rng = random.Random(seed)
        self._clock = clock
        self._lock = threading.RLock()
        self.records: list[BatchRecord] = [] if records is None else records  # may be shared by both APIs

    def _fate(self, behaviour: BatchBehaviour, custom_id: str, body: dict[str, Any]) -> tuple[int, str] | None:
        rule = behaviour.fail(custom_id, body) if callable(behaviour.fail) else behaviour.fail.get(custom_id)
        if rule is None:
            for status, rate in behaviour.fail_rate.items():
                if self._rng.random() < rate:
                    rule = status
                    break
        if rule is None:
            return None
        status, message = rule if isinstance(rule, tuple) else (rule, f"injected batch item failure ({rule})")
        return int(status), str(message)


def successes(records: list[BatchRecord]) -> Counter[str]:
    """custom_id -> in how many batches it succeeded (a batch lane wants exactly 1 each)."""
    return Counter(cid for record in records for cid, outcome in record.outcomes.items() if outcome == "succeeded")
