"""`/v1` needs `Authorization: Bearer <token>`; the token says who is calling (tenant, role),
and the role says whether an operator-only route (SPEC §5) may be called at all."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from flask import Flask, Response, g, request
from werkzeug.datastructures import MultiDict

from aiintegration.domain.auth import Caller, TokenGrant, token_digest
from aiintegration.web.errors import error_response

log = logging.getLogger(__name__)

Query = MultiDict[str, str]


def _always(caller: Caller, query: Query) -> bool:
    return True


def _names_a_tenant(caller: Caller, query: Query) -> bool:
    return "tenant" in query


def _names_another_tenant(caller: Caller, query: Query) -> bool:
    return any(tenant != caller.tenant for tenant in query.getlist("tenant"))


# SPEC §5's operator-only routes: (URL rule or, ending in "*", its prefix; methods, None for all;
# what they are for; whether this request is one only operators may make). Checked with the token,
# before any argument is parsed, so a client gets its 403 whatever else its request says (not a
# 422 that would tell it the route's arguments). The commands check the role again.
OPERATOR_ONLY: tuple[tuple[str, frozenset[str] | None, str, Callable[[Caller, Query], bool]], ...] = (
    ("/v1/dlq*", None, "the dead-letter queue", _always),
    ("/v1/batches*", None, "the batch lane", _always),
    ("/v1/budgets", None, "the budgets", _always),
    ("/v1/providers/<string:name>/config", frozenset({"PUT"}), "changing a provider's config", _always),
    ("/v1/providers/switch", frozenset({"POST"}), "switching providers", _always),
    ("/v1/tasks", frozenset({"GET", "HEAD"}), "listing another tenant's tasks", _names_a_tenant),
    ("/v1/usage", frozenset({"GET", "HEAD"}), "another tenant's usage", _names_another_tenant),
)


def operator_only(rule: str, method: str, caller: Caller, query: Query) -> str | None:
    """What a request to `rule` is for if only operators may make it, else None."""
    for pattern, methods, what, applies in OPERATOR_ONLY:
        base = pattern.removesuffix("*")
        matches = rule == base or (pattern.endswith("*") and rule.startswith(base + "/"))
        if matches and (methods is None or method in methods) and applies(caller, query):
            return what
    return None


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
        if request.url_rule is not None and not caller.is_operator:
            what = operator_only(request.url_rule.rule, request.method, caller, request.args)
            if what is not None:
                caller.require_operator(what)
        return None
