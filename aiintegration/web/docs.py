"""`/docs` without the internet: Swagger UI's assets served by the app itself, from the pinned
`flask-swagger-ui` package (its `dist/` is the upstream swagger-ui build, version = its own),
behind a Content-Security-Policy that lets the page load nothing from anywhere else."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, request, send_from_directory

DIST = Path(str(files("flask_swagger_ui") / "dist"))
VERSION = (DIST / "VERSION").read_text().strip().lstrip("v")
# The version is in the path: a new release never meets an old cached file.
ASSETS_URL = f"/docs/swagger-ui/{VERSION}/"
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-16x16.png", "favicon-32x32.png"})
# Off: by default Swagger UI sends the spec's URL to validator.swagger.io for a badge.
SWAGGER_UI_CONFIG = {"validatorUrl": None}
# Swagger UI needs inline styles, data: images and flask-smorest's inline config script.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")

bp = Blueprint("swagger_ui", __name__)


@bp.get(f"{ASSETS_URL}<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        abort(404)
    return send_from_directory(DIST, name, max_age=365 * 86400)


def _docs_policy(response: Response) -> Response:
    if request.endpoint in ("api-docs.openapi_swagger_ui", "swagger_ui.asset"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def install(app: Flask) -> None:
    """Serve the assets that `OPENAPI_SWAGGER_UI_URL = ASSETS_URL` points flask-smorest's `/docs` at."""
    app.register_blueprint(bp)
    app.after_request(_docs_policy)
