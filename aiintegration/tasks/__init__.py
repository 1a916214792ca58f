"""Thin Celery tasks: parse arguments, call one command, map the error tree onto retry/DLQ."""

from __future__ import annotations

import socket
import threading
from typing import Any

from aiintegration.errors import AIIntegrationError

# Errors of the caller's making are answered, not retried: they go back in the result.
CALLER_ERRORS = (AIIntegrationError,)


def current_worker_id(task: Any) -> str:
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    return f"{hostname}/{threading.current_thread().name}"


def error_result(exc: AIIntegrationError) -> dict[str, Any]:
    return {"ok": False, "error": {**exc.to_dict(), "details": exc.details, "status": exc.http_status}}
