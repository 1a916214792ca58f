"""Liveness and readiness, without a token."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from aiintegration.commands.liveness import readiness
from aiintegration.web.current import context

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    ready, checks = readiness(context())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": checks}), 200 if ready else 503
