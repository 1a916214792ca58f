"""Structured logs: one JSON object per line with task id, attempt and provider, and secrets
masked wherever they appear."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|sk-ant-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
_FIELDS = ("task_id", "attempt", "provider", "worker_id", "session_id")


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: m.group(0)[:3] + "…[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in _FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        extra = getattr(record, "fields", None)  # a structured line's own fields (attempt outcomes)
        if isinstance(extra, dict):
            out.update({k: v for k, v in extra.items() if k not in out or out[k] is None})
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        return redact(text)


def configure(*, json_lines: bool = True, level: int = logging.INFO) -> None:
    """Put our formatter on the root logger's handlers (adding one if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter: logging.Formatter = JsonFormatter() if json_lines else RedactingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
