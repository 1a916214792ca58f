"""Who is calling: tenants and roles (SPEC §5 "Tokens"), and the rule for what a caller sees.

A token names a tenant and a role. A `client` sees only its own tenant's tasks, sessions,
feeds and events — another tenant's id is answered exactly like an unknown one; an
`operator` sees every tenant and may use the operator-only routes. Tokens are kept as their
SHA-256 digests only, whether given in clear or as `sha256:<hex>`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiintegration.errors import Forbidden, ValidationError

DEFAULT_TENANT = "default"  # the tenant of bare tokens (AII_API_TOKENS as a comma list)
BROKER_TENANT = "celery"  # what a caller by task name is, unless it passes `tenant`
# Checked with `fullmatch` (`re.match` with `$` lets "acme\n" through); `^`/`$` stay so the
# pattern reads the same in the OpenAPI document (ECMA regexes have no `\A`/`\Z`).
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", re.ASCII)
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})", re.ASCII)


class Role(StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    role: Role

    @property
    def is_operator(self) -> bool:
        return self.role == Role.OPERATOR

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see (and act on) something of `tenant`."""
        return self.is_operator or tenant == self.tenant

    def require_operator(self, what: str) -> None:
        if not self.is_operator:
            raise Forbidden(f"{what} is for operators", details={"role": str(self.role)})


# Callers inside the trust boundary: the broker's (send_task by name), the sweeps, the CLI.
TRUSTED = Caller(BROKER_TENANT, Role.OPERATOR)


def trusted(tenant: str | None = None) -> Caller:
    """A caller with broker access, acting for `tenant` (default `celery`)."""
    return Caller(check_tenant(tenant) if tenant is not None else BROKER_TENANT, Role.OPERATOR)


def check_tenant(value: Any) -> str:
    if not isinstance(value, str) or not TENANT_NAME.fullmatch(value):
        raise ValidationError("invalid tenant", details={"tenant": "1 to 64 letters, digits, '.', '_' or '-'"})
    return value


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One accepted token, kept as the SHA-256 of the token itself."""

    digest: bytes
    caller: Caller


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _grant(key: str, spec: Any) -> TokenGrant:
    match = _DIGEST.fullmatch(key)
    digest = bytes.fromhex(match.group(1)) if match else token_digest(key)
    if not isinstance(spec, dict):
        raise ValueError("each token maps to {\"name\": <tenant>, \"role\": \"client\" | \"operator\"}")
    name, role = spec.get("name"), spec.get("role", Role.CLIENT)
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise ValueError(f"token name {name!r}: 1 to 64 letters, digits, '.', '_' or '-'")
    if role not in tuple(Role):
        raise ValueError(f"token role {role!r}: client or operator")
    if not match and len(key) < 16:
        raise ValueError("a token in clear must be at least 16 characters")
    return TokenGrant(digest, Caller(name, Role(role)))


def parse_tokens(raw: str) -> tuple[TokenGrant, ...]:
    """AII_API_TOKENS (or the file AII_API_TOKENS_FILE names): a JSON object
    `{"<token>" | "sha256:<hex>": {"name", "role"}}`, or a comma list of bare tokens, each an
    operator of the `default` tenant. ValueError says what is wrong, never echoing a token."""
    raw = raw.strip()
    if not raw:
        return ()
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError("the token table is not valid JSON") from None
        return tuple(_grant(str(key), spec) for key, spec in data.items())
    return tuple(TokenGrant(token_digest(t.strip()), Caller(DEFAULT_TENANT, Role.OPERATOR))
                 for t in raw.split(",") if t.strip())
