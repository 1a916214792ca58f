"""`/v1/dlq` and `/v1/providers`: what operators use when providers misbehave."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from marshmallow import Schema, fields, validate

from aiintegration.commands import dlq, providers
from aiintegration.domain import limits
from aiintegration.domain.auth import TENANT_NAME
from aiintegration.domain.limits import TASK_TYPES
from aiintegration.web.blueprint import Blueprint
from aiintegration.web.current import caller, context
from aiintegration.web.responses import (
    DlqEntrySchema,
    DlqListSchema,
    ProviderSchema,
    ProvidersSchema,
    ReplayedSchema,
    SwitchedSchema,
)
from aiintegration.web.tasks import TaskSchema
from aiintegration.web.validators import FullMatch

blp = Blueprint("operations", __name__, url_prefix="/v1", description="Dead-letter queue and providers")
SECURED: dict[str, Any] = {"security": [{"bearer": []}]}


class DlqFilterSchema(Schema):
    provider = fields.String()
    error_class = fields.String(validate=validate.Length(max=100))
    task_type = fields.String(validate=validate.OneOf(TASK_TYPES))
    requested_by = fields.String(validate=validate.Length(max=limits.MAX_NAME))
    tenant = fields.String(validate=FullMatch(TENANT_NAME))
    review_state = fields.String(validate=validate.OneOf(dlq.REVIEW_STATES))


class DlqQuerySchema(DlqFilterSchema):
    limit = fields.Integer(load_default=limits.DEFAULT_PAGE, validate=validate.Range(min=1, max=limits.MAX_PAGE))
    cursor = fields.Float()


class ReplaySchema(Schema):
    reason = fields.String(load_default="replayed from the DLQ", validate=validate.Length(min=1, max=limits.MAX_REASON))


class ReviewSchema(Schema):
    note = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_NOTE))
    review_state = fields.String(load_default="manual_review", validate=validate.OneOf(dlq.REVIEW_STATES))


class ProviderConfigSchema(Schema):
    """Types only: `domain.providers.validate_config_changes` holds the rules (one place),
    and answers every bad field at once."""

    api_key = fields.String(load_only=True, metadata={
        "description": f"{limits.MIN_API_KEY} to {limits.MAX_API_KEY} characters; write-only"})
    base_url = fields.String(allow_none=True, metadata={"description": "an http(s) URL"})
    models = fields.Dict(keys=fields.String(validate=validate.OneOf(TASK_TYPES)), values=fields.String())
    timeout_s = fields.Float(metadata={"description": f"1 to {limits.MAX_PROVIDER_TIMEOUT_S:g} seconds"})
    enabled = fields.Boolean()
    limits = fields.Dict(metadata={"description": '{"rpm", "tpm", "models": {"<model>": {"rpm", "tpm"}}}; 0 = none'})


class SwitchSchema(Schema):
    from_provider = fields.String(required=True)
    to_provider = fields.String(required=True)
    reason = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_REASON))


def _json(payload: Any, status: int = 200) -> Response:
    resp = jsonify(payload)
    resp.status_code = status
    return resp


@blp.route("/dlq")
@blp.arguments(DlqQuerySchema, location="query")
@blp.alt_response(200, schema=DlqListSchema, success=True, description="DLQ entries")
@blp.doc(**SECURED)
def list_dlq(query: dict[str, Any]) -> Response:
    """DLQ entries, newest first, filtered."""
    cursor = query.pop("cursor", None)
    items, next_cursor = dlq.list_entries(context(), caller(), cursor=repr(cursor) if cursor is not None else None,
                                          **query)
    return _json({"items": items, "next_cursor": next_cursor})


@blp.route("/dlq/<uuid:task_id>/replay", methods=["POST"])
@blp.arguments(ReplaySchema)
@blp.alt_response(202, schema=TaskSchema, success=True, description="The task, queued again")
@blp.doc(**SECURED)
def replay_one(body: dict[str, Any], task_id: Any) -> Response:
    """Requeue one dead-lettered task under its same id and history."""
    return _json(dlq.replay(context(), str(task_id), body["reason"], caller()).public(), 202)


@blp.route("/dlq/replay", methods=["POST"])
@blp.arguments(DlqFilterSchema)
@blp.alt_response(202, schema=ReplayedSchema, success=True, description="Replayed and skipped ids")
@blp.doc(**SECURED)
def replay_filtered(body: dict[str, Any]) -> Response:
    """Requeue every entry matching the filter (at least one filter field)."""
    return _json(dlq.replay_matching(context(), caller(), **body), 202)


@blp.route("/dlq/<uuid:task_id>/review", methods=["POST"])
@blp.arguments(ReviewSchema)
@blp.alt_response(200, schema=DlqEntrySchema, success=True, description="The annotated entry")
@blp.doc(**SECURED)
def review(body: dict[str, Any], task_id: Any) -> Response:
    """Annotate an entry (and mark it for manual review)."""
    return _json(dlq.review(context(), str(task_id), body["note"], body["review_state"], caller()))


@blp.route("/dlq/<uuid:task_id>", methods=["DELETE"])
@blp.alt_response(200, schema=DlqEntrySchema, success=True, description="The discarded entry")
@blp.doc(**SECURED)
def discard(task_id: Any) -> Response:
    """Discard an entry: it leaves the DLQ and the record starts its retention clock."""
    return _json(dlq.discard(context(), str(task_id), caller()))


@blp.route("/providers")
@blp.alt_response(200, schema=ProvidersSchema, success=True, description="Order and providers")
@blp.doc(**SECURED)
def list_providers() -> Response:
    """Preference order, configs (keys redacted) and breaker states."""
    return _json(providers.overview(context()))


@blp.route("/providers/<string:name>/config", methods=["PUT"])
@blp.arguments(ProviderConfigSchema)
@blp.alt_response(200, schema=ProviderSchema, success=True, description="The applied config")
@blp.doc(**SECURED)
def update_config(body: dict[str, Any], name: str) -> Response:
    """Validate, live-test and apply a provider config (UpdateProviderConfig)."""
    return _json(providers.update_provider_config(context(), name, body, caller()))


@blp.route("/providers/switch", methods=["POST"])
@blp.arguments(SwitchSchema)
@blp.alt_response(200, schema=SwitchedSchema, success=True, description="The new order")
@blp.doc(**SECURED)
def switch(body: dict[str, Any]) -> Response:
    """Put `to_provider` ahead of `from_provider` (SwitchProvider)."""
    return _json(providers.switch_provider(context(), body["from_provider"], body["to_provider"], body["reason"],
                                           caller()))
