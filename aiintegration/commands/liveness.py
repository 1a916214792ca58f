"""Worker liveness and readiness: what /readyz and the `aii_workers_alive` gauge report."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from aiintegration.commands.context import Context

log = logging.getLogger(__name__)


def start_liveness(ctx: Context, name: str, every_s: float = 5.0) -> threading.Thread:
    """Record this worker process as alive every few seconds, on a daemon thread."""
    member = f"{name}/{os.getpid()}"

    def beat() -> None:
        while True:
            try:
                ctx.workers.seen(member)
            except Exception:  # noqa: BLE001 - liveness must never kill the worker
                log.warning("could not record worker liveness", exc_info=True)
            time.sleep(every_s)

    thread = threading.Thread(target=beat, name="aii-liveness", daemon=True)
    thread.start()
    return thread


def worker_started(ctx: Context, hostname: str) -> None:
    """A worker process is ready: warn about the server's settings, start reporting liveness."""
    ctx.workers.server_warnings()
    start_liveness(ctx, hostname)


def readiness(ctx: Context) -> tuple[bool, dict[str, Any]]:
    """Ready when the store answers; the workers seen are reported, not required (tasks are
    accepted without workers and wait in the queue)."""
    checks: dict[str, Any] = {}
    try:
        alive = ctx.workers.alive()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["redis"] = f"unavailable: {type(exc).__name__}"
        return False, checks
    checks["redis"] = "ok"
    checks["workers"] = f"{alive} alive" if alive else "none seen in the last 15 s"
    return True, checks
