"""The chat rules: what a session's context may be, how `include_context` merges into it,
and which turns of the history go to the provider."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiintegration.domain.json_values import check_value
from aiintegration.domain.limits import MAX_CHAT_CONTEXT_BYTES, MAX_CHAT_MESSAGE_CHARS, MAX_NAME
from aiintegration.errors import PayloadTooLarge, ValidationError

CONTEXT_TOKENS = 8000  # history budget; the oldest turns go first, the system context stays
HISTORY_TAIL = 400  # messages read for an answer at most: the trimming below keeps fewer
HISTORY_KEPT = 1000  # messages a session keeps (and GET shows): older ones are dropped as new ones come
CHARS_PER_TOKEN = 4
CHAT_PRIORITY = 8
Context = dict[str, Any] | str


def context_text(context: Context) -> str:
    """The system prompt a context becomes: compact JSON (indented, a deeply nested 63 KB
    context became a 1.37 MB prompt)."""
    return context if isinstance(context, str) else json.dumps(context, ensure_ascii=False, separators=(",", ":"))


def check_context(value: Any, field: str) -> Context:
    if not isinstance(value, dict | str):
        raise ValidationError(f"{field} must be an object or a string", details={field: "object or string"})
    check_value(value, field)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_CHAT_CONTEXT_BYTES:
        raise PayloadTooLarge(f"{field} is over {MAX_CHAT_CONTEXT_BYTES // 1024} KiB", details={field: "too large"})
    return value


def check_session_fields(user_id: Any, item_id: Any) -> None:
    errors = {f: f"a non-empty string of at most {MAX_NAME} characters"
              for f, v in (("user_id", user_id), ("item_id", item_id))
              if not (isinstance(v, str) and v.strip() and len(v) <= MAX_NAME)}
    if errors:
        raise ValidationError("invalid chat session", details=errors)


def check_message(message: Any) -> str:
    if not isinstance(message, str) or not message.strip():
        raise ValidationError("message must be a non-empty string", details={"message": "required"})
    if len(message) > MAX_CHAT_MESSAGE_CHARS:
        raise PayloadTooLarge(f"message is over {MAX_CHAT_MESSAGE_CHARS} characters", details={"message": "too large"})
    check_value(message, "message")
    return message


def merged_context(context: Context, addition: Context) -> Context:
    """`include_context` merged into the session's context: objects key by key, anything
    else appended as text. A merge over the context's size cap is refused (413) before
    anything is written."""
    if isinstance(context, dict) and isinstance(addition, dict):
        merged: Context = {**context, **addition}
    else:
        merged = f"{context_text(context)}\n\n{context_text(addition)}"
    return check_context(merged, "include_context")


def trimmed(system: str, history: Sequence[dict[str, Any]], budget_tokens: int = CONTEXT_TOKENS) -> list[dict[str, str]]:
    """System context plus as many of the latest turns as fit (about 4 characters a token);
    the latest turn is always kept."""
    budget = budget_tokens * CHARS_PER_TOKEN - len(system)
    kept: list[dict[str, str]] = []
    for message in reversed(history):
        budget -= len(message["content"])
        if budget < 0 and kept:
            break
        kept.append({"role": message["role"], "content": message["content"]})
    return [{"role": "system", "content": system}, *reversed(kept)]
