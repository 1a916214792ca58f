"""Liveness and readiness, without a token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from aiintegration.web import context

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    try:
        context().redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
