"""The beat sweeps as Celery tasks (scheduled in celeryconfig.py)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from aiintegration.commands import sweeps
from aiintegration.commands.context import get_context
from aiintegration.tasks import policy


@shared_task(name="aiintegration.process_pending_tasks", **policy(answered=False))
def process_pending_tasks() -> dict[str, Any]:
    return sweeps.process_pending_tasks(get_context())


@shared_task(name="aiintegration.cleanup_timed_out_tasks", **policy(answered=False))
def cleanup_timed_out_tasks() -> dict[str, Any]:
    return sweeps.cleanup_timed_out_tasks(get_context())


@shared_task(name="aiintegration.process_dead_letter_queue", **policy(answered=False))
def process_dead_letter_queue() -> dict[str, Any]:
    return sweeps.process_dead_letter_queue(get_context())
