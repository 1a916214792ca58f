"""Task states and the transitions allowed between them (SPEC §2 "Task states")."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # waiting out its backoff; picked up again when due
    TIMED_OUT = "timed_out"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"


S = TaskStatus

# SPEC §2: a task in one of these has an outcome (a DLQ replay may still requeue a dead-lettered one).
TERMINAL: frozenset[TaskStatus] = frozenset({S.SUCCEEDED, S.CANCELLED, S.DEAD_LETTERED})
# Never change again: their retention clock runs and their event streams may be folded away.
FINAL: frozenset[TaskStatus] = frozenset({S.SUCCEEDED, S.CANCELLED})

RETRYABLE_BY_HAND: frozenset[TaskStatus] = frozenset({S.DEAD_LETTERED, S.RETRYING, S.TIMED_OUT})

# to-state -> the states it may be entered from. Every transition the commands make is
# checked against this table (a command may narrow it, never widen it); the store's script
# applies the check atomically.
ALLOWED_FROM: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.RUNNING: frozenset({S.QUEUED, S.RETRYING}),  # plus RUNNING whose lease expired (crash takeover)
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.RETRYING: frozenset({S.RUNNING, S.TIMED_OUT}) | RETRYABLE_BY_HAND,  # backoff, or a delayed manual retry
    S.TIMED_OUT: frozenset({S.RUNNING}),
    S.DEAD_LETTERED: frozenset({S.RUNNING, S.TIMED_OUT, S.RETRYING, S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED, S.RETRYING, S.RUNNING, S.TIMED_OUT}),
    S.QUEUED: RETRYABLE_BY_HAND,  # a manual retry or a DLQ replay
}
CANCELLABLE = ALLOWED_FROM[S.CANCELLED]
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5


def terminal_event(event: str) -> bool:
    """Whether a task event is the last its feed sends (`task.succeeded`, …)."""
    return event.startswith("task.") and event[5:] in TERMINAL


def to_broker_priority(api_priority: int) -> int:
    """API priority 9 is most urgent; the Redis transport serves 0 first."""
    return MAX_PRIORITY - api_priority
