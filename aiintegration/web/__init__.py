"""The Flask app factory: `gunicorn 'aiintegration.web:create_app()'`."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api
from marshmallow import Schema, fields

from aiintegration.commands.context import Context, get_context
from aiintegration.config import Settings
from aiintegration.config import get_settings as get_settings_

MAX_BODY_BYTES = 1024 * 1024


class ErrorDetail(Schema):
    code = fields.String(required=True, metadata={"description": "stable machine-readable code"})
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ErrorSchema(Schema):
    """Every error answer: `{"error": {"code", "message", "details"}}` (SPEC §3)."""

    error = fields.Nested(ErrorDetail, required=True)


class ApiWithOurErrors(Api):
    # The default error response documented on every operation is our error shape.
    ERROR_SCHEMA = ErrorSchema


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """`config` may carry `AII_SETTINGS` (a Settings) or `AII_CONTEXT` (a Context) for tests."""
    app = Flask("aiintegration")
    app.config.update(
        API_TITLE="aiintegration",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    if not app.testing:
        from aiintegration.logs import configure

        configure(json_lines=(app.config.get("AII_SETTINGS") or get_settings_()).log_json)
    ctx: Context = app.config.get("AII_CONTEXT") or (
        Context.from_settings(app.config["AII_SETTINGS"]) if "AII_SETTINGS" in app.config else get_context())
    app.extensions["aiintegration"] = ctx
    from aiintegration.celery_app import app as celery

    app.extensions["celery"] = celery

    api = ApiWithOurErrors(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}}})
    from aiintegration.web import chat, errors, health, metrics, operations, tasks

    api.register_blueprint(tasks.blp)
    api.register_blueprint(operations.blp)
    api.register_blueprint(chat.blp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    errors.install(app, ctx.settings)
    return app


def context() -> Context:
    from flask import current_app

    ctx: Context = current_app.extensions["aiintegration"]
    return ctx


__all__ = ["create_app", "context", "Settings"]
