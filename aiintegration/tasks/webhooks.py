"""Webhook delivery as its own Celery task on the `webhooks` queue, retried with backoff."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from aiintegration.commands import webhooks
from aiintegration.commands.context import get_context
from aiintegration.errors import ValidationError, WebhookFailed


@shared_task(name="aiintegration.deliver_webhook", bind=True, acks_late=True, ignore_result=True,
             autoretry_for=(WebhookFailed,), retry_backoff=2, retry_backoff_max=600, retry_jitter=True,
             max_retries=8)
def deliver_webhook(self: Task[Any, Any], /, task_id: str) -> dict[str, Any]:
    retries = int(self.request.retries or 0)
    try:
        outcome = webhooks.try_deliver(get_context(), task_id, attempt=retries + 1)
    except ValidationError as exc:  # refused target: retrying will not help
        return {"delivered": False, "why": exc.message}
    if outcome is None:
        # Every delivery slot of this process is taken: back on the queue instead of waiting
        # in a pool thread, with the same retry count (being busy is not a failure). acks_late:
        # this message is acknowledged after the new one is on the broker, so a worker that
        # dies in between loses nothing (at worst the receiver gets the event twice).
        self.app.send_task(self.name, kwargs={"task_id": task_id}, countdown=webhooks.busy_delay(), retries=retries,
                           ignore_result=True, add_to_parent=False)
        return {"delivered": False, "why": "busy: re-queued"}
    return outcome
