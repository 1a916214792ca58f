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

TERMINAL: frozenset[TaskStatus] = frozenset({S.SUCCEEDED, S.CANCELLED, S.DEAD_LETTERED})

# to-state -> the states it may be entered from. The store's scripts enforce exactly this.
ALLOWED_FROM: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.RUNNING: frozenset({S.QUEUED, S.RETRYING}),  # plus RUNNING whose lease expired (crash takeover)
    S.SUCCEEDED: frozenset({S.RUNNING}),
    S.RETRYING: frozenset({S.RUNNING, S.TIMED_OUT}),
    S.TIMED_OUT: frozenset({S.RUNNING}),
    S.DEAD_LETTERED: frozenset({S.RUNNING, S.TIMED_OUT, S.RETRYING, S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED, S.RETRYING, S.RUNNING, S.TIMED_OUT}),
    S.QUEUED: frozenset({S.RETRYING, S.DEAD_LETTERED}),  # manual retry or DLQ replay
}

CANCELLABLE = ALLOWED_FROM[S.CANCELLED]
RETRYABLE_BY_HAND = frozenset({S.DEAD_LETTERED, S.RETRYING, S.TIMED_OUT})


def can_transition(current: TaskStatus | str, target: TaskStatus | str) -> bool:
    return TaskStatus(current) in ALLOWED_FROM[TaskStatus(target)]


def is_terminal(status: TaskStatus | str) -> bool:
    return TaskStatus(status) in TERMINAL


def to_broker_priority(api_priority: int) -> int:
    """API priority 9 is most urgent; the Redis transport serves 0 first."""
    return 9 - api_priority
