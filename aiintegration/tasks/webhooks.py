"""Webhook delivery as its own Celery task, retried with backoff."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from aiintegration.commands import webhooks
from aiintegration.commands.context import get_context
from aiintegration.errors import ValidationError, WebhookFailed


@shared_task(name="aiintegration.deliver_webhook", acks_late=True, ignore_result=True,
             autoretry_for=(WebhookFailed,), retry_backoff=2, retry_backoff_max=600, retry_jitter=True,
             max_retries=8)
def deliver_webhook(task_id: str) -> dict[str, Any]:
    try:
        return webhooks.deliver(get_context(), task_id)
    except ValidationError as exc:  # refused target: retrying will not help
        return {"delivered": False, "why": exc.message}
