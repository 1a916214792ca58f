"""`CeleryClient`: submit, cancel and retry by the stable task names over the broker, for a
service that has the broker URL and no HTTP route to the API.

It builds a plain `Celery(broker=..., backend=...)` app of its own and never imports
aiintegration's Celery app or celeryconfig: a caller's process has neither configured."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from aiintegration.client.protocol import Record, submission
from aiintegration.errors import AIIntegrationError, ServiceUnavailable, error_class

CREATE = "aiintegration.create_generation_task"
CANCEL = "aiintegration.cancel_task"
RETRY = "aiintegration.retry_task"


def broker_priority(api_priority: int) -> int:
    """API priority 9 is the most urgent; the Redis transport serves 0 first."""
    return 9 - api_priority


def reply_error(error: dict[str, Any]) -> AIIntegrationError:
    """An `{"ok": false, "error": {...}}` reply as the error it stands for."""
    cls = error_class(error.get("class")) or error_class(error.get("code")) or AIIntegrationError
    exc = cls(str(error.get("message") or "the task refused"), provider=error.get("provider"),
              details=dict(error.get("details") or {}))
    exc.code = str(error.get("code") or cls.code)
    exc.http_status = int(error.get("status") or cls.http_status)
    return exc


class CeleryClient:
    """Calls by name; each call waits up to `timeout` s for the worker's reply and raises the
    mapped error on `{"ok": false}`. `submit` returns `{"id", "created"}` (the broker has no
    look-up task: read the record over REST), `cancel` and `retry` the task's record."""

    def __init__(self, broker_url: str, *, backend_url: str | None = None, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.app = Celery("aiintegration-client", broker=broker_url, backend=backend_url or broker_url,
                          set_as_current=False)
        self.app.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"],
            # The worker consumes one Redis list per priority 0..9; with kombu's default steps
            # (0, 3, 6, 9) a message would still land in a list it reads, one step coarser.
            broker_transport_options={"priority_steps": list(range(10)), "queue_order_strategy": "priority"},
        )

    def close(self) -> None:
        """Release the broker and backend connections."""
        self.app.close()

    def submit(self, task_type: str = "text_generation", *, request_content: dict[str, Any], requested_by: str,
               priority: int = 5, metadata: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a task; `{"id", "created"}` (created False: a repeat of `idempotency_key`,
        generated when not given so that sending again after a lost reply creates nothing)."""
        kwargs = {**submission(task_type, request_content, requested_by, priority, metadata, options),
                  "idempotency_key": idempotency_key or str(uuid.uuid4())}
        reply = self._call(CREATE, kwargs, priority=broker_priority(priority))
        return {"id": reply["id"], "created": reply["created"]}

    def cancel(self, task_id: str, reason: str) -> Record:
        """Cancel a queued or running task (sent ahead of every other message); its record."""
        record: Record = self._call(CANCEL, {"task_id": task_id, "cancellation_reason": reason}, priority=0)["task"]
        return record

    def retry(self, task_id: str, reason: str, delay: float | None = None) -> Record:
        """Run a dead-lettered or timed-out task again under its id; its record."""
        record: Record = self._call(RETRY, {"task_id": task_id, "retry_reason": reason, "delay": delay},
                                    priority=broker_priority(5))["task"]
        return record

    def _call(self, name: str, kwargs: dict[str, Any], *, priority: int) -> dict[str, Any]:
        result = self.app.send_task(name, kwargs=kwargs, priority=priority)
        try:
            # The reply comes from aiintegration's workers, never from the caller's own pool, so
            # waiting inside a caller's Celery task cannot deadlock it.
            reply: dict[str, Any] = result.get(timeout=self.timeout, disable_sync_subtasks=False)
        except CeleryTimeout as exc:
            raise ServiceUnavailable(f"no aiintegration worker answered {name} within {self.timeout:g} s",
                                     details={"celery_task_id": result.id}) from exc
        finally:
            result.forget()
        if not reply.get("ok"):
            raise reply_error(reply.get("error") or {})
        return reply
