"""Shared pieces of the fault-injection suite (tests/reliability)."""

from __future__ import annotations

import time
from collections import Counter

from aiintegration.commands.context import Context
from aiintegration.domain.records import TaskRecord

TERMINAL = ("succeeded", "dead_lettered", "cancelled")
# Redelivery in seconds instead of an hour: short visibility timeout, lease and restore sweep.
CRASH_ENV = {"AII_LEASE_S": "2", "AII_VISIBILITY_TIMEOUT_S": "4", "AII_UNACKED_RESTORE_INTERVAL_S": "1",
             "AII_UNACKED_RESTORE_THROTTLE": "1"}


def terminal_count(ctx: Context) -> int:
    return sum(ctx.tasks.count(status) for status in TERMINAL)


def state(ctx: Context) -> dict[str, int]:
    """Where the work is: tasks by status, broker messages waiting and unacked (for failure messages)."""
    statuses = ("queued", "running", "retrying", "timed_out", *TERMINAL)
    out = {status: ctx.tasks.count(status) for status in statuses}
    out["broker_waiting"] = sum(int(ctx.tasks.r.llen(key)) for key in ctx.tasks.r.scan_iter("celery*", _type="list"))
    out["broker_unacked"] = int(ctx.tasks.r.hlen("unacked"))
    return out


def wait_all_terminal(ctx: Context, n: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while terminal_count(ctx) < n:
        if time.monotonic() > end:
            raise AssertionError(f"not every task finished in {timeout_s}s: {state(ctx)}")
        time.sleep(0.2)


def event_counts(ctx: Context, task_ids: list[str]) -> list[Counter[str]]:
    """Per task, how many events of each type its stream holds."""
    pipe = ctx.tasks.r.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.xrange(ctx.tasks.keys.task_stream(task_id))
    return [Counter(fields["type"] for _, fields in entries) for entries in pipe.execute()]


def summary(records: list[TaskRecord | None]) -> Counter[str]:
    return Counter(r.status if r else "missing" for r in records)
