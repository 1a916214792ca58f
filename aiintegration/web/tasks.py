"""`/v1/tasks`: submit, look up, list, cancel and retry generation tasks."""

from __future__ import annotations

import re
import typing
from typing import Any

from flask import Response, jsonify, request
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from aiintegration.commands import feeds, lifecycle
from aiintegration.commands.create import create_generation_task
from aiintegration.domain import limits
from aiintegration.domain.auth import TENANT_NAME
from aiintegration.domain.records import PUBLIC_FIELDS, TIME_FIELDS, TaskOptions, TaskRecord
from aiintegration.domain.states import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, TaskStatus
from aiintegration.web.blueprint import Blueprint
from aiintegration.web.current import caller, context
from aiintegration.web.events import last_event_id, sse
from aiintegration.web.validators import FullMatch

blp = Blueprint("tasks", __name__, url_prefix="/v1/tasks", description="Generation tasks")
STATUSES = [s.value for s in TaskStatus]


class OptionsSchema(Schema):
    provider = fields.String(allow_none=True)
    timeout_s = fields.Float(allow_none=True, validate=validate.Range(min=limits.MIN_TIMEOUT_S, max=limits.MAX_TIMEOUT_S))
    max_retries = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=0, max=limits.MAX_RETRIES))
    retry_on_timeout = fields.Boolean(allow_none=True)
    stream = fields.Boolean(allow_none=True)
    # checked once, in the domain (domain/submission.py), as for a task sent by name
    callback_url = fields.String(allow_none=True, validate=validate.Length(max=limits.MAX_URL),
                                 metadata={"format": "uri", "description": "http(s) URL told of the outcome"})
    batch = fields.Boolean(allow_none=True, metadata={
        "description": "the batch lane (half price, done within a day): true / false; unset lets AII_BATCH_POLICY decide"})


if set(OptionsSchema().fields) != {f for f in TaskOptions.__dataclass_fields__}:  # pragma: no cover
    raise RuntimeError("OptionsSchema and TaskOptions name different options")


class CreateTaskSchema(Schema):
    task_type = fields.String(required=True, validate=validate.OneOf(limits.TASK_TYPES))
    request_content = fields.Dict(required=True, metadata={"description": "prompt/messages/… by task type"})
    requested_by = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_NAME))
    priority = fields.Integer(strict=True, load_default=DEFAULT_PRIORITY,
                              validate=validate.Range(min=MIN_PRIORITY, max=MAX_PRIORITY),
                              metadata={"description": f"{MIN_PRIORITY}–{MAX_PRIORITY}, {MAX_PRIORITY} most urgent"})
    metadata = fields.Dict(load_default=dict)
    idempotency_key = fields.String(allow_none=True, validate=validate.Length(min=1, max=limits.MAX_NAME))
    options = fields.Nested(OptionsSchema, load_default=dict)


class TaskErrorSchema(Schema):
    code = fields.String(allow_none=True)
    message = fields.String()
    provider = fields.String(allow_none=True)
    retryable = fields.Boolean()
    class_ = fields.String(data_key="class")


def _public_field(name: str, hint: Any) -> fields.Field[Any]:
    """The OpenAPI field of one public record field, from its type in `TaskRecord`."""
    nullable = type(None) in typing.get_args(hint)
    if name == "status":
        return fields.String(validate=validate.OneOf(STATUSES))
    if name == "error":
        return fields.Nested(TaskErrorSchema, allow_none=True)
    if name in TIME_FIELDS:  # epoch seconds in the record, ISO 8601 strings outside
        return fields.String(allow_none=nullable)
    base = hint if not nullable else next(a for a in typing.get_args(hint) if a is not type(None))
    if base is int:
        return fields.Integer(allow_none=nullable)
    if base is str:
        return fields.String(allow_none=nullable)
    return fields.Dict(allow_none=nullable)


def _hint(name: str) -> Any:
    """A record field's type, or a property's return type (`max_retries`)."""
    attribute = getattr(TaskRecord, name, None)
    if isinstance(attribute, property) and attribute.fget is not None:
        return typing.get_type_hints(attribute.fget)["return"]
    return typing.get_type_hints(TaskRecord)[name]


TaskSchema = Schema.from_dict({name: _public_field(name, _hint(name)) for name in PUBLIC_FIELDS}, name="TaskSchema")


class CreatedSchema(Schema):
    id = fields.String()
    status = fields.String()


class TaskListSchema(Schema):
    items = fields.List(fields.Nested(TaskSchema))
    next_cursor = fields.String(allow_none=True)


CURSOR = (r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?"  # always a finite float
          r"\|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ListQuerySchema(Schema):
    tenant = fields.String(validate=FullMatch(TENANT_NAME), metadata={"description": "operators only"})
    status = fields.String(validate=validate.OneOf(STATUSES))
    requested_by = fields.String(validate=validate.Length(min=1, max=limits.MAX_NAME))
    limit = fields.Integer(load_default=limits.DEFAULT_PAGE, validate=validate.Range(min=1, max=limits.MAX_PAGE))
    cursor = fields.String(validate=FullMatch(CURSOR, re.ASCII, error="not a cursor from a previous page's next_cursor"))


class CancelSchema(Schema):
    cancellation_reason = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_REASON))


class RetrySchema(Schema):
    retry_reason = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_REASON))
    delay = fields.Float(allow_none=True, validate=validate.Range(min=0, max=limits.MAX_RETRY_DELAY_S))


@blp.route("")
class Tasks(MethodView):
    @blp.arguments(CreateTaskSchema)
    @blp.response(202, CreatedSchema)
    @blp.alt_response(200, schema=TaskSchema, description="Idempotent repeat: the first task")
    @blp.doc(security=[{"bearer": []}], parameters=[{"in": "header", "name": "Idempotency-Key",
                                                        "schema": {"type": "string"}, "required": False}])
    def post(self, body: dict[str, Any]) -> Any:
        """Create a generation task (CreateGenerationTask)."""
        key = request.headers.get("Idempotency-Key") or body.get("idempotency_key")
        options = {k: v for k, v in body.get("options", {}).items() if v is not None}
        ctx = context()
        task_id, created = create_generation_task(
            ctx, caller=caller(), task_type=body["task_type"], request_content=body["request_content"],
            requested_by=body["requested_by"], priority=body["priority"], metadata=body["metadata"],
            idempotency_key=key, options=options,
        )
        if not created:
            return _json(lifecycle.get_task(ctx, task_id, caller()).public(), 200)
        resp = _json({"id": task_id, "status": "queued"}, 202)
        resp.headers["Location"] = f"/v1/tasks/{task_id}"
        return resp

    @blp.arguments(ListQuerySchema, location="query")
    @blp.response(200, TaskListSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, query: dict[str, Any]) -> Any:
        """List tasks, newest first, filtered by status and/or requested_by (`tenant`: operators only)."""
        items, cursor = lifecycle.list_tasks(context(), caller(), tenant=query.get("tenant"), status=query.get("status"),
                                             requested_by=query.get("requested_by"), limit=query["limit"],
                                             cursor=query.get("cursor"))
        return _json({"items": [r.public() for r in items], "next_cursor": cursor}, 200)


@blp.route("/<uuid:task_id>")
@blp.response(200, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def get_task(task_id: Any) -> Any:
    """Status lookup: the record, with `result` once succeeded and `error` once failed."""
    return _json(lifecycle.get_task(context(), str(task_id), caller()).public(), 200)


@blp.route("/<uuid:task_id>/cancel", methods=["POST"])
@blp.arguments(CancelSchema)
@blp.response(202, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def cancel(body: dict[str, Any], task_id: Any) -> Any:
    """Cancel a queued or running task (CancelTask); 409 if it already finished."""
    return _json(lifecycle.cancel_task(context(), str(task_id), body["cancellation_reason"], caller()).public(), 202)


@blp.route("/<uuid:task_id>/retry", methods=["POST"])
@blp.arguments(RetrySchema)
@blp.response(202, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def retry(body: dict[str, Any], task_id: Any) -> Any:
    """Retry a dead-lettered or timed-out task under the same id (RetryTask)."""
    return _json(lifecycle.retry_task(context(), str(task_id), body["retry_reason"], body.get("delay"),
                                      caller()).public(), 202)


@blp.route("/<uuid:task_id>/events")
@blp.doc(security=[{"bearer": []}])
def task_events(task_id: Any) -> Response:
    """SSE stream of the task's events; ends after its terminal event."""
    return sse(feeds.open_task_feed(context(), str(task_id), last_event_id(), caller()))


def _json(payload: dict[str, Any], status: int) -> Response:
    # The records are already in their public shape; skipping re-serialization keeps submit fast.
    resp = jsonify(payload)
    resp.status_code = status
    return resp
