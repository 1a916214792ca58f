"""The batch lane's beat tasks (scheduled in celeryconfig.py; names are a stable contract)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from aiintegration.commands import batch_results, batches
from aiintegration.commands.context import get_context
from aiintegration.tasks import policy


@shared_task(name="aiintegration.collect_batches", **policy(answered=False))
def collect_batches() -> dict[str, Any]:
    """Submit the lane's groups that are due as provider batches (reconciling first)."""
    return batches.collect_batches(get_context())


@shared_task(name="aiintegration.poll_batches", **policy(answered=False))
def poll_batches() -> dict[str, Any]:
    """Poll submitted batches and apply the results of those that ended."""
    return batch_results.poll_batches(get_context())
