"""`/v1/tasks`: submit, look up, list, cancel and retry generation tasks."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from aiintegration.commands import lifecycle
from aiintegration.commands.create import create_generation_task
from aiintegration.domain.records import public
from aiintegration.domain.states import TaskStatus
from aiintegration.domain.submission import TASK_TYPES
from aiintegration.web import context
from aiintegration.web.events import feed, last_event_id

blp = Blueprint("tasks", __name__, url_prefix="/v1/tasks", description="Generation tasks")


class OptionsSchema(Schema):
    provider = fields.String(allow_none=True)
    timeout_s = fields.Float(allow_none=True, validate=validate.Range(min=1, max=3600))
    max_retries = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=0, max=10))
    retry_on_timeout = fields.Boolean(allow_none=True)
    stream = fields.Boolean(allow_none=True)
    callback_url = fields.Url(schemes={"http", "https"}, require_tld=False, allow_none=True)


class CreateTaskSchema(Schema):
    task_type = fields.String(required=True, validate=validate.OneOf(TASK_TYPES))
    request_content = fields.Dict(required=True, metadata={"description": "prompt/messages/… by task type"})
    requested_by = fields.String(required=True, validate=validate.Length(min=1, max=200))
    priority = fields.Integer(strict=True, load_default=5, validate=validate.Range(min=0, max=9),
                              metadata={"description": "0–9, 9 most urgent"})
    metadata = fields.Dict(load_default=dict)
    idempotency_key = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    options = fields.Nested(OptionsSchema, load_default=dict)


class TaskErrorSchema(Schema):
    code = fields.String(allow_none=True)
    message = fields.String()
    provider = fields.String(allow_none=True)
    retryable = fields.Boolean()
    class_ = fields.String(data_key="class")


class TaskSchema(Schema):
    id = fields.String()
    task_type = fields.String()
    status = fields.String(validate=validate.OneOf([s.value for s in TaskStatus]))
    priority = fields.Integer()
    requested_by = fields.String()
    request_content = fields.Dict()
    metadata = fields.Dict()
    options = fields.Dict()
    attempts = fields.Integer()
    max_retries = fields.Integer()
    provider = fields.String(allow_none=True)
    worker_id = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    error = fields.Nested(TaskErrorSchema, allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)
    deadline_at = fields.String(allow_none=True)


class CreatedSchema(Schema):
    id = fields.String()
    status = fields.String()


class TaskListSchema(Schema):
    items = fields.List(fields.Nested(TaskSchema))
    next_cursor = fields.String(allow_none=True)


CURSOR = (r"^-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?"  # always a finite float
          r"\|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ListQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf([s.value for s in TaskStatus]))
    requested_by = fields.String(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Regexp(CURSOR, error="not a cursor from a previous page's next_cursor"))


class CancelSchema(Schema):
    cancellation_reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))


class RetrySchema(Schema):
    retry_reason = fields.String(required=True, validate=validate.Length(min=1, max=1000))
    delay = fields.Float(allow_none=True, validate=validate.Range(min=0, max=3000))


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
            ctx, task_type=body["task_type"], request_content=body["request_content"],
            requested_by=body["requested_by"], priority=body["priority"], metadata=body["metadata"],
            idempotency_key=key, options=options,
        )
        if not created:
            return _json(public(lifecycle.get_task(ctx, task_id)), 200)
        resp = _json({"id": task_id, "status": "queued"}, 202)
        resp.headers["Location"] = f"/v1/tasks/{task_id}"
        return resp

    @blp.arguments(ListQuerySchema, location="query")
    @blp.response(200, TaskListSchema)
    @blp.doc(security=[{"bearer": []}])
    def get(self, query: dict[str, Any]) -> Any:
        """List tasks, newest first, filtered by status and/or requested_by."""
        items, cursor = context().tasks.list(status=query.get("status"), requested_by=query.get("requested_by"),
                                             limit=query["limit"], cursor=query.get("cursor"))
        return _json({"items": [public(r) for r in items], "next_cursor": cursor}, 200)


@blp.route("/<uuid:task_id>")
@blp.response(200, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def get_task(task_id: Any) -> Any:
    """Status lookup: the record, with `result` once succeeded and `error` once failed."""
    return _json(public(lifecycle.get_task(context(), str(task_id))), 200)


@blp.route("/<uuid:task_id>/cancel", methods=["POST"])
@blp.arguments(CancelSchema)
@blp.response(202, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def cancel(body: dict[str, Any], task_id: Any) -> Any:
    """Cancel a queued or running task (CancelTask); 409 if it already finished."""
    return _json(public(lifecycle.cancel_task(context(), str(task_id), body["cancellation_reason"])), 202)


@blp.route("/<uuid:task_id>/retry", methods=["POST"])
@blp.arguments(RetrySchema)
@blp.response(202, TaskSchema)
@blp.doc(security=[{"bearer": []}])
def retry(body: dict[str, Any], task_id: Any) -> Any:
    """Retry a dead-lettered or timed-out task under the same id (RetryTask)."""
    return _json(public(lifecycle.retry_task(context(), str(task_id), body["retry_reason"], body.get("delay"))), 202)


@blp.route("/<uuid:task_id>/events")
@blp.doc(security=[{"bearer": []}])
def task_events(task_id: Any) -> Response:
    """SSE stream of the task's events; ends after its terminal event."""
    ctx = context()
    lifecycle.get_task(ctx, str(task_id))  # 404 for unknown tasks
    terminal = {"task.succeeded", "task.cancelled", "task.dead_lettered"}
    return feed(ctx.tasks.stream_key(str(task_id)), after=last_event_id(), is_end=terminal.__contains__,
                final=lambda last: ctx.tasks.final_events(str(task_id), last))


def _json(payload: dict[str, Any], status: int) -> Response:
    # The records are already in their public shape; skipping re-serialization keeps submit fast.
    resp = jsonify(payload)
    resp.status_code = status
    return resp
