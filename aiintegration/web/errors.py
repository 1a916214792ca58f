"""Every error leaves as `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from aiintegration.errors import AIIntegrationError

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error"}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _flatten(messages: Any, prefix: str = "") -> dict[str, Any]:
    """webargs' {"json": {"field": ["msg"]}} → {"field": "msg"}."""
    out: dict[str, Any] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = str(key) if not prefix else f"{prefix}.{key}"
            if key in ("json", "query", "headers", "form") and not prefix:
                name = ""
            out.update(_flatten(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = " ".join(messages)
    else:
        out[prefix or "body"] = messages
    return out


def install(app: Flask) -> None:
    @app.errorhandler(AIIntegrationError)
    def domain_error(exc: AIIntegrationError) -> Response:
        status = exc.http_status if 400 <= exc.http_status < 500 else 503
        wait = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if status == 429 and wait else None
        return error_response(status, exc.code, exc.message, exc.details, headers=headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        details = _flatten(data.get("messages")) if "messages" in data else {}
        message = exc.description or exc.name
        if status == 422:
            message = "the request failed validation"
        elif status == 400 and details:
            message = "the request body is not valid JSON" if any("JSON" in str(v) for v in details.values()) \
                else "bad request"
        return error_response(status, _HTTP_CODES.get(status, "http_error"), message, details)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        if isinstance(exc, redis.RedisError):
            log.error("redis unavailable: %s", type(exc).__name__)
            return error_response(503, "store_unavailable", "the task store is unavailable; try again")
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
