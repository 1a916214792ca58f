"""`/v1/batches`: the batch lane's provider batches, for operators."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from marshmallow import Schema, fields, validate

from aiintegration.commands import batches
from aiintegration.domain import limits
from aiintegration.domain.lane_batch import COUNT_KEYS, BatchStatus
from aiintegration.web.blueprint import Blueprint
from aiintegration.web.current import caller, context
from aiintegration.web.responses import Open

blp = Blueprint("batches", __name__, url_prefix="/v1", description="The batch lane's provider batches (operators)")


class BatchQuerySchema(Schema):
    provider = fields.String(validate=validate.Length(min=1, max=limits.MAX_NAME))
    status = fields.String(validate=validate.OneOf([s.value for s in BatchStatus]))
    limit = fields.Integer(load_default=limits.DEFAULT_PAGE, validate=validate.Range(min=1, max=limits.MAX_PAGE))
    cursor = fields.Float(metadata={"description": "next_cursor of the previous page"})


class BatchSchema(Open):
    id = fields.String(required=True, metadata={"description": "the provider's batch id (ours until it has one)"})
    lane_id = fields.String()
    provider = fields.String(required=True)
    model = fields.String()
    status = fields.String(required=True, validate=validate.OneOf([s.value for s in BatchStatus]))
    provider_status = fields.String(allow_none=True)
    counts = fields.Dict(keys=fields.String(validate=validate.OneOf(COUNT_KEYS)), values=fields.Integer(),
                         required=True)
    provider_counts = fields.Dict()
    created_at = fields.String(required=True)
    submitted_at = fields.String(allow_none=True)
    ended_at = fields.String(allow_none=True)
    age_s = fields.Float()
    error = fields.String(allow_none=True)


class BatchListSchema(Open):
    items = fields.List(fields.Nested(BatchSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


@blp.route("/batches")
@blp.arguments(BatchQuerySchema, location="query")
@blp.alt_response(200, schema=BatchListSchema, success=True, description="Lane batches, newest first")
@blp.doc(security=[{"bearer": []}])
def list_batches(query: dict[str, Any]) -> Response:
    """The batch lane's batches, newest first: provider, status, counts, age."""
    cursor = query.pop("cursor", None)
    items, next_cursor = batches.list_batches(context(), caller(), cursor=repr(cursor) if cursor is not None else None,
                                              **query)
    resp = jsonify({"items": items, "next_cursor": next_cursor})
    resp.status_code = 200
    return resp
