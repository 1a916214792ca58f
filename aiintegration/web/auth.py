"""`/v1` needs `Authorization: Bearer <token>`; the token says who is calling (tenant, role)."""

from __future__ import annotations

import hmac
import logging

from flask import Flask, Response, g, request

from aiintegration.domain.auth import Caller, TokenGrant, token_digest
from aiintegration.web.errors import error_response

log = logging.getLogger(__name__)


def caller_for(header: str, grants: tuple[TokenGrant, ...]) -> Caller | None:
    """The caller a bearer token stands for, or None. The digest of the given token is
    compared with every grant's, so timing says nothing about which one nearly matched."""
    scheme, _, token = header.partition(" ")
    given = token.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    digest = token_digest(given)
    found = None
    for grant in grants:
        if hmac.compare_digest(digest, grant.digest):
            found = grant.caller
    return found


def install(app: Flask, grants: tuple[TokenGrant, ...]) -> None:
    if not grants:
        log.warning("AII_API_TOKENS is empty: every /v1 request will be refused")

    @app.before_request
    def require_token() -> Response | None:
        if not request.path.startswith("/v1"):
            return None
        caller = caller_for(request.headers.get("Authorization", ""), grants)
        if caller is None:
            return error_response(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                                  headers={"WWW-Authenticate": "Bearer"})
        g.caller = caller
        return None
