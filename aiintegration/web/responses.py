"""Schemas of the operations' and chat routes' answers, for the OpenAPI document (the
handlers build their JSON themselves). Objects stay open (`unknown = INCLUDE`) so adding a
field is not a breaking change for a client validating against the document."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate


class Open(Schema):
    class Meta:
        unknown = INCLUDE


class DlqEntrySchema(Open):
    task_id = fields.String(required=True)
    task_type = fields.String()
    requested_by = fields.String()
    tenant = fields.String()
    provider = fields.String(allow_none=True)
    error = fields.Dict(allow_none=True)
    attempts = fields.Integer()
    dead_lettered_at = fields.String(allow_none=True)
    reason = fields.String()
    review_state = fields.String()
    auto_retries = fields.Integer()
    notes = fields.List(fields.Dict())


class DlqListSchema(Open):
    items = fields.List(fields.Nested(DlqEntrySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class ReplayedSchema(Open):
    replayed = fields.List(fields.String(), required=True)
    skipped = fields.List(fields.String(), required=True)


class ProviderSchema(Open):
    name = fields.String(required=True)
    kind = fields.String(required=True)
    enabled = fields.Boolean()
    models = fields.Dict()
    base_url = fields.String(allow_none=True)
    api_key = fields.String(allow_none=True, metadata={"description": "redacted: sk-…abcd"})
    timeout_s = fields.Float()
    breaker = fields.String(validate=validate.OneOf(["closed", "open", "half_open"]))
    error_rate = fields.Float(allow_none=True, metadata={
        "description": "share of the last 5 minutes' calls that failed transiently (0–1; null: no calls)"})
    limits = fields.Dict(metadata={"description": "configured rpm/tpm (0: none), per model where they differ"})
    remaining = fields.Dict(metadata={"description": "left in the current window: requests, tokens (null: not "
                                                     "limited), the limits in force (configured or learned)"})


class ProvidersSchema(Open):
    order = fields.List(fields.String(), required=True)
    providers = fields.List(fields.Nested(ProviderSchema), required=True)


class SwitchedSchema(Open):
    order = fields.List(fields.String(), required=True)
    repinned = fields.Integer(metadata={"description": "queued/retrying tasks pinned to `from` now pinned to `to`"})
    regrouped = fields.Integer(metadata={"description": "unpinned batch-lane tasks that waited for `from`'s "
                                                        "batches and now wait where the new order puts them"})


class SessionSchema(Open):
    id = fields.String(required=True)
    user_id = fields.String(required=True)
    item_id = fields.String(required=True)
    tenant = fields.String()
    context = fields.Raw(allow_none=True)
    status = fields.String(required=True)
    created_at = fields.String()
    closed_at = fields.String(allow_none=True)
    close_reason = fields.String(allow_none=True)
    history = fields.List(fields.Dict())
    stats = fields.Dict()


class MessageAcceptedSchema(Open):
    message_id = fields.String(required=True)
    task_id = fields.String(required=True)
