"""Validation of a CreateGenerationTask request: pure, raises `ValidationError`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from aiintegration.domain.auth import DEFAULT_TENANT
from aiintegration.domain.json_values import problem
from aiintegration.domain.limits import (
    CHAT_ROLES,
    MAX_CONTENT_BYTES,
    MAX_METADATA_BYTES,
    MAX_NAME,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    MAX_TOKENS,
    MAX_URL,
    MIN_TIMEOUT_S,
    TASK_TYPES,
)
from aiintegration.domain.records import TaskOptions
from aiintegration.domain.states import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from aiintegration.errors import PayloadTooLarge, ValidationError

OPTION_KEYS = frozenset(f.name for f in fields(TaskOptions))
# Bad chat messages named one by one in a 422, the rest counted: 330k bad messages fit in a
# 990 KB body and answered 33 MB when every one was listed.
LISTED_MESSAGE_ERRORS = 20


@dataclass(frozen=True)
class Submission:
    """A request that passed validation, with defaults filled in."""

    task_type: str
    request_content: dict[str, Any]
    requested_by: str
    priority: int = DEFAULT_PRIORITY
    metadata: dict[str, Any] = field(default_factory=dict)
    options: TaskOptions = TaskOptions()
    idempotency_key: str | None = None
    tenant: str = DEFAULT_TENANT
    chat_session_id: str | None = None  # set by SendChatMessage, never from caller input
    chat_message_id: str | None = None
    trace_context: str | None = None  # the creating request's traceparent, when traced
    budget: tuple[float, int, str, str] | None = None  # reserved at submission: cost, tokens, day, month
    lane_group: str | None = None  # set by CreateGenerationTask when the task goes to the batch lane

    def fingerprint(self) -> str:
        """What an idempotency key is bound to: the request as validated (defaults filled in),
        so the same request with or without its defaults spelled out is the same request."""
        options = self.options.to_dict()
        if options.get("batch") is None:  # unset: the same request as before the option existed
            options.pop("batch", None)
        canonical = json.dumps([self.task_type, self.request_content, self.requested_by, self.priority, self.metadata,
                                options], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def json_size(value: Any) -> int:
    """Bytes of `value` serialized as it is stored."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_content(task_type: str, content: Any, errors: dict[str, str]) -> None:
    if not isinstance(content, dict):
        errors["request_content"] = "must be a JSON object"
        return
    if task_type == "chat_completion":
        messages = content.get("messages")
        if not isinstance(messages, list) or not messages:
            errors["request_content.messages"] = "must be a non-empty list of {role, content}"
            return
        bad = [i for i, m in enumerate(messages)
               if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str)]
        for i in bad[:LISTED_MESSAGE_ERRORS]:
            errors[f"request_content.messages[{i}]"] = f"needs role in {list(CHAT_ROLES)} and string content"
        if len(bad) > LISTED_MESSAGE_ERRORS:
            errors["request_content.messages"] = f"{len(bad) - LISTED_MESSAGE_ERRORS} more invalid message(s) not listed"
    else:
        prompt = content.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            errors["request_content.prompt"] = "must be a non-empty string"
    if "system" in content and not isinstance(content["system"], str):
        errors["request_content.system"] = "must be a string"
    if "model" in content and not isinstance(content["model"], str):
        errors["request_content.model"] = "must be a string"
    if "max_tokens" in content and not (is_int(content["max_tokens"]) and 1 <= content["max_tokens"] <= MAX_TOKENS):
        errors["request_content.max_tokens"] = f"must be an integer from 1 to {MAX_TOKENS}"
    if task_type == "image_generation" and "size" in content:
        size = content["size"]
        if not (isinstance(size, str) and len(size.split("x")) == 2 and all(p.isdigit() for p in size.split("x"))):
            errors["request_content.size"] = "must look like '1024x1024'"


def _http_url(url: Any) -> bool:
    if not isinstance(url, str) or len(url) > MAX_URL:
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a bad port or an unbalanced IPv6 bracket
        return False


def _check_options(options: Any, *, default_timeout_s: float, max_timeout_s: float, default_max_retries: int,
                   errors: dict[str, str]) -> TaskOptions:
    if not isinstance(options, dict):
        errors["options"] = "must be a JSON object"
        return TaskOptions()
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        errors["options"] = f"unknown option(s): {', '.join(unknown)}"
    given = {k: v for k, v in options.items() if k in OPTION_KEYS and v is not None}
    out: dict[str, Any] = {**TaskOptions(timeout_s=default_timeout_s, max_retries=default_max_retries).to_dict(),
                           **given}
    if out["provider"] is not None and not (isinstance(out["provider"], str) and out["provider"]):
        errors["options.provider"] = "must be a provider name"
    if not (is_number(out["timeout_s"]) and MIN_TIMEOUT_S <= out["timeout_s"] <= max_timeout_s):
        errors["options.timeout_s"] = f"must be a number of seconds from {MIN_TIMEOUT_S:g} to {max_timeout_s:g}"
    if not (is_int(out["max_retries"]) and 0 <= out["max_retries"] <= MAX_RETRIES):
        errors["options.max_retries"] = f"must be an integer from 0 to {MAX_RETRIES}"
    for flag in ("retry_on_timeout", "stream"):
        if not isinstance(out[flag], bool):
            errors[f"options.{flag}"] = "must be true or false"
    if out["batch"] is not None and not isinstance(out["batch"], bool):
        errors["options.batch"] = "must be true, false or null"
    url = out["callback_url"]
    if url is not None and not _http_url(url):
        errors["options.callback_url"] = "must be an http(s) URL"
    if any(key.startswith("options") for key in errors):
        return TaskOptions()
    return TaskOptions(**{**out, "timeout_s": float(out["timeout_s"])})


def validate_submission(
    *,
    task_type: Any,
    request_content: Any,
    requested_by: Any,
    priority: Any = DEFAULT_PRIORITY,
    metadata: Any = None,
    options: Any = None,
    idempotency_key: Any = None,
    default_timeout_s: float = 300.0,
    max_timeout_s: float = MAX_TIMEOUT_S,
    default_max_retries: int = 3,
) -> Submission:
    """Check every field, collect all problems, and raise once with all of them."""
    errors: dict[str, str] = {}
    if task_type not in TASK_TYPES:
        errors["task_type"] = f"must be one of {', '.join(TASK_TYPES)}"
    elif request_content is not None:
        _check_content(task_type, request_content, errors)
    if request_content is None:
        errors["request_content"] = "is required"
    if not isinstance(requested_by, str) or not requested_by.strip() or len(requested_by) > MAX_NAME:
        errors["requested_by"] = f"must be a non-empty string of at most {MAX_NAME} characters"
    if priority is None:
        priority = DEFAULT_PRIORITY
    if not (is_int(priority) and MIN_PRIORITY <= priority <= MAX_PRIORITY):
        errors["priority"] = f"must be an integer from {MIN_PRIORITY} (least urgent) to {MAX_PRIORITY} (most urgent)"
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        errors["metadata"] = "must be a JSON object"
    if idempotency_key is not None and not (isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= MAX_NAME):
        errors["idempotency_key"] = f"must be a string of 1 to {MAX_NAME} characters"
    for name, value in (("request_content", request_content), ("metadata", metadata), ("options", options),
                        ("requested_by", requested_by), ("idempotency_key", idempotency_key)):
        found = problem(value)  # lone surrogates, huge numbers, deep nesting: also from a Celery message
        if found:
            errors[name] = found
    opts = _check_options({} if options is None else options, default_timeout_s=default_timeout_s,
                          max_timeout_s=max_timeout_s, default_max_retries=default_max_retries, errors=errors)
    if errors:
        raise ValidationError("the task request is invalid", details=errors)
    if json_size(request_content) > MAX_CONTENT_BYTES:
        raise PayloadTooLarge(f"request_content is over {MAX_CONTENT_BYTES // 1024} KiB serialized",
                              details={"request_content": "too large"})
    if json_size(metadata) > MAX_METADATA_BYTES:
        raise PayloadTooLarge(f"metadata is over {MAX_METADATA_BYTES // 1024} KiB serialized",
                              details={"metadata": "too large"})
    return Submission(task_type, request_content, requested_by.strip(), priority, metadata, opts, idempotency_key)
