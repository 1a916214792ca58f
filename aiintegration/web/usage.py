"""`/v1/usage` (per day: requests, tokens, cost) and `/v1/budgets` (operators: limits, spent,
reserved, left)."""

from __future__ import annotations

import re
from typing import Any

from flask import Response, jsonify
from marshmallow import Schema, fields, validate

from aiintegration.commands import usage
from aiintegration.domain.auth import TENANT_NAME
from aiintegration.web.blueprint import Blueprint
from aiintegration.web.current import caller, context
from aiintegration.web.responses import Open
from aiintegration.web.validators import FullMatch

blp = Blueprint("usage", __name__, url_prefix="/v1", description="Usage and budgets")
SECURED: dict[str, Any] = {"security": [{"bearer": []}]}
DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", re.ASCII)  # checked whole (FullMatch)


class UsageQuerySchema(Schema):
    tenant = fields.String(validate=FullMatch(TENANT_NAME), metadata={"description": "another's: operators"})
    provider = fields.String(validate=validate.Length(min=1, max=200))
    model = fields.String(validate=validate.Length(min=1, max=200))
    from_ = fields.String(data_key="from", validate=FullMatch(DAY), metadata={"description": "UTC day"})
    to = fields.String(validate=FullMatch(DAY), metadata={"description": "UTC day, inclusive"})


class UsageRowSchema(Open):
    day = fields.String(required=True)
    tenant = fields.String(required=True)
    provider = fields.String(required=True)
    model = fields.String(required=True)
    requests = fields.Integer()
    input_tokens = fields.Integer()
    cached_input_tokens = fields.Integer()
    output_tokens = fields.Integer()
    cost = fields.Float()


class UsageSchema(Open):
    items = fields.List(fields.Nested(UsageRowSchema), required=True)


class BudgetsSchema(Open):
    items = fields.List(fields.Dict(), required=True)


@blp.route("/usage")
@blp.arguments(UsageQuerySchema, location="query")
@blp.alt_response(200, schema=UsageSchema, success=True, description="Per day, tenant, provider and model")
@blp.doc(**SECURED)
def get_usage(query: dict[str, Any]) -> Response:
    """Requests, input/cached/output tokens and cost per UTC day (default: the last 7 days)."""
    rows = usage.usage_report(context(), caller(), tenant=query.get("tenant"), provider=query.get("provider"),
                              model=query.get("model"), start=query.get("from_"), end=query.get("to"))
    return jsonify({"items": rows})


@blp.route("/budgets")
@blp.alt_response(200, schema=BudgetsSchema, success=True, description="Each budgeted tenant's windows")
@blp.doc(**SECURED)
def get_budgets() -> Response:
    """Budgets (AII_BUDGETS) with what is spent, reserved and left today and this month (operators)."""
    return jsonify({"items": usage.budgets_view(context(), caller())})
