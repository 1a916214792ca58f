"""Provider quotas as rules: the limits a provider (or one of its models) has, what one
request is estimated to take from them, and what a provider's rate-limit headers say. The
store (`store/quotas.py`) enforces them across every worker; the adapters read the headers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiintegration.domain.submission import is_int
from aiintegration.errors import ValidationError

WINDOW_S = 60.0  # "per minute"
CHARS_PER_TOKEN = 4
MAX_LIMIT = 10**9


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens (input + output) per minute; 0 = not configured (learned from the
    provider's headers, else unlimited)."""

    rpm: int = 0
    tpm: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"rpm": self.rpm, "tpm": self.tpm}


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """A provider's limits, and the models whose account limits differ (their own bucket)."""

    default: RateLimits = RateLimits()
    models: Mapping[str, RateLimits] = field(default_factory=dict)

    def bucket(self, model: str) -> tuple[str, RateLimits]:
        """(the bucket an attempt on `model` draws from, its limits): the model's own if it
        has any, else the provider's shared one (`*`)."""
        if model in self.models:
            return model, self.models[model]
        return "*", self.default

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.default.to_dict()
        if self.models:
            out["models"] = {m: limits.to_dict() for m, limits in self.models.items()}
        return out


def _limits(value: Any, where: str, errors: dict[str, str]) -> RateLimits:
    if not isinstance(value, dict):
        errors[where] = "an object with rpm and/or tpm"
        return RateLimits()
    unknown = sorted(set(value) - {"rpm", "tpm", "models"})
    if unknown:
        errors[where] = f"unknown field(s): {', '.join(unknown)}"
    for name in ("rpm", "tpm"):
        if name in value and not (is_int(value[name]) and 0 <= value[name] <= MAX_LIMIT):
            errors[f"{where}.{name}"] = f"an integer from 0 (not limited) to {MAX_LIMIT}"
    return RateLimits(int(value.get("rpm") or 0) if is_int(value.get("rpm")) else 0,
                      int(value.get("tpm") or 0) if is_int(value.get("tpm")) else 0)


def parse_limits(value: Any, where: str = "limits") -> ProviderLimits:
    """`{"rpm", "tpm", "models": {"<model>": {"rpm", "tpm"}}}` → ProviderLimits, every bad
    field named at once (422)."""
    errors: dict[str, str] = {}
    default = _limits(value, where, errors)
    models: dict[str, RateLimits] = {}
    raw_models = value.get("models", {}) if isinstance(value, dict) else {}
    if not isinstance(raw_models, dict):
        errors[f"{where}.models"] = "an object mapping model names to {rpm, tpm}"
    else:
        for model, limits in raw_models.items():
            models[str(model)] = _limits(limits, f"{where}.models.{model}", errors)
    if errors:
        raise ValidationError("invalid limits", details=errors)
    return ProviderLimits(default, models)


def limits_from_env(upper_name: str, env: Mapping[str, str]) -> ProviderLimits:
    """AII_PROVIDER_<NAME>_RPM / _TPM, and AII_PROVIDER_<NAME>_MODEL_LIMITS (JSON
    `{"<model>": {"rpm", "tpm"}}`) for models whose account limits differ."""
    prefix = f"AII_PROVIDER_{upper_name}_"
    raw: dict[str, Any] = {}
    for name in ("rpm", "tpm"):
        text = env.get(prefix + name.upper(), "").strip()
        if text:
            raw[name] = int(text)
    models = env.get(prefix + "MODEL_LIMITS", "").strip()
    if models:
        raw["models"] = json.loads(models)
    return parse_limits(raw, prefix.lower().rstrip("_")) if raw else ProviderLimits()


def ask_again_after(wait_s: float, *, cap_s: float, ceiling_s: float) -> float:
    """How long a throttled task's message waits before it asks the bucket again: its whole
    wait when that is at most `cap_s` (AII_QUOTA_MAX_COUNTDOWN_S); a longer wait — a task far
    back in a deep line — half of it, never less than `cap_s`, so such a task asks a handful
    of times on its way to the front instead of every `cap_s`, and one near the front is as
    prompt as ever. Never past `ceiling_s` (a countdown longer than the broker's visibility
    timeout is delivered twice)."""
    if wait_s <= cap_s:
        return max(0.05, wait_s)
    return min(max(cap_s, wait_s / 2), ceiling_s)


def estimate_tokens(system: str | None, messages: Sequence[Mapping[str, Any]]) -> int:
    """A prompt's tokens before it runs (~4 characters a token); what a request reserves is
    this plus all the output it may produce. Settled against the real usage afterwards."""
    chars = len(system or "") + sum(len(str(m.get("content", ""))) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What a provider's answer said about its limits (any part may be missing)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.limit_requests, self.remaining_requests, self.limit_tokens,
                                       self.remaining_tokens))


def go_duration_s(text: str) -> float | None:
    """OpenAI's reset format ("120ms", "1s", "1.5s", "6m0s", "1h2m3s") → seconds."""
    total, number, i = 0.0, "", 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    text = text.strip()
    if not text:
        return None
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i:i + 2] if text[i:i + 2] in units else ch
        if unit not in units or not number:
            return None
        try:
            total += float(number) * units[unit]
        except ValueError:
            return None
        number, i = "", i + len(unit)
    if number:  # a bare number: seconds
        try:
            total += float(number)
        except ValueError:
            return None
    return total
