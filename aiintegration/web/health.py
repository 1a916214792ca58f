"""Liveness and readiness, without a token."""

from __future__ import annotations

import time

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
    ready = checks["redis"] == "ok"
    if ready:
        # Tasks are accepted without workers (they wait in the queue), so this informs, not fails.
        alive = context().redis.zcount(f"{context().settings.key_prefix}:workers", time.time() - 15, "+inf")
        checks["workers"] = f"{alive} alive" if alive else "none seen in the last 15 s"
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
