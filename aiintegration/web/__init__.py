"""The Flask app factory: `gunicorn 'aiintegration.web:create_app()'`."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api
from marshmallow import Schema, fields

from aiintegration import telemetry
from aiintegration.celery_app import CeleryPublisher
from aiintegration.celery_app import app as celery_app
from aiintegration.commands.context import Context
from aiintegration.config import Settings, get_settings
from aiintegration.domain.limits import MAX_BODY_BYTES
from aiintegration.logs import configure
from aiintegration.web import auth, batches, chat, docs, errors, health, metrics, operations, tasks, usage


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
    """`config` may carry `AII_SETTINGS` (a Settings), `AII_CELERY` (a Celery app whose broker
    the commands publish to) or `AII_CONTEXT` (a ready Context) — tests use them."""
    app = Flask("aiintegration")
    app.config.update(
        API_TITLE="aiintegration",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=docs.ASSETS_URL,  # served by this app: /docs works offline
        OPENAPI_SWAGGER_UI_CONFIG=docs.SWAGGER_UI_CONFIG,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    settings: Settings = app.config.get("AII_SETTINGS") or get_settings()
    if not app.testing:
        configure(json_lines=settings.log_json)
    if telemetry.setup("aiintegration-web"):
        telemetry.instrument_flask(app)
    # As in Flask's Celery example: the app keeps its Celery app, and the context publishes through it.
    app.extensions["celery"] = app.config.get("AII_CELERY") or celery_app
    ctx: Context = app.config.get("AII_CONTEXT") or Context.build(
        settings, CeleryPublisher(app.extensions["celery"]))
    app.extensions["aiintegration"] = ctx

    api = ApiWithOurErrors(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"}}}})
    api.register_blueprint(tasks.blp)
    api.register_blueprint(operations.blp)
    api.register_blueprint(chat.blp)
    api.register_blueprint(usage.blp)
    api.register_blueprint(batches.blp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    docs.install(app)
    auth.install(app, ctx.settings.api_tokens)
    errors.install(app)
    return app


__all__ = ["create_app"]
