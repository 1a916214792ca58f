"""A provider's configuration, the rules for changing it, and how its key may be shown.

It lives in the domain because the store keeps it and the adapters read it, and neither
may import the other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiintegration.domain.limits import MAX_API_KEY, MAX_PROVIDER_TIMEOUT_S, MIN_API_KEY, TASK_TYPES
from aiintegration.domain.quotas import ProviderLimits, limits_from_env, parse_limits
from aiintegration.domain.submission import is_number
from aiintegration.errors import ApiKeyRequired, ValidationError

CONFIG_KEYS = frozenset({"api_key", "base_url", "models", "timeout_s", "enabled", "limits"})


# Vendors' published key prefixes, longest first: they say which kind of key it is and
# nothing of the secret. Any other text before a `-` may be part of the secret itself.
KEY_PREFIXES = ("sk-ant-", "sk-proj-", "sk-")
PREFIX_MIN_KEY = 20  # a shorter key shows no prefix
TAIL_MIN_KEY = 16  # a shorter key shows no tail either


def redact_url(url: str | None) -> str | None:
    """A base_url as callers may see it: a login (`user:pass@`) or query string some
    OpenAI-compatible endpoints put credentials in is reduced to `…`."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "…"
    netloc = f"…@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def redact_key(key: str | None) -> str | None:
    """`sk-proj-abcdef…wxyz` → `sk-proj-…wxyz`: a known vendor prefix (keys of 20+ characters)
    and the last 4 characters (keys of 16+); short or unknown keys show nothing else of themselves."""
    if not key:
        return None
    long_enough = len(key) >= PREFIX_MIN_KEY
    prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), "") if long_enough else ""
    tail = key[-4:] if len(key) >= TAIL_MIN_KEY else ""
    return f"{prefix}…{tail}"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """What a provider needs to talk to its endpoint. `api_key` is write-only: see `public()`."""

    name: str
    kind: str  # "openai" | "anthropic" | "openai_compatible" | "local"
    api_key: str | None = None
    base_url: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0
    enabled: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    limits: Mapping[str, Any] = field(default_factory=dict)  # {"rpm", "tpm", "models": {...}}: domain/quotas.py

    @property
    def rate_limits(self) -> ProviderLimits:
        return parse_limits(self.limits) if self.limits else ProviderLimits()

    def with_changes(self, **changes: Any) -> ProviderConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Everything, the key included: for the store only."""
        return {"name": self.name, "kind": self.kind, "api_key": self.api_key, "base_url": self.base_url,
                "models": dict(self.models), "timeout_s": self.timeout_s, "enabled": self.enabled,
                "extra": dict(self.extra), "limits": dict(self.limits)}

    def public(self) -> dict[str, Any]:
        """The config as callers may see it: the key reduced to `sk-…abcd`, credentials in
        the base_url to `…`."""
        return {
            "name": self.name,
            "kind": self.kind,
            "enabled": self.enabled,
            "models": dict(self.models),
            "base_url": redact_url(self.base_url),
            "api_key": redact_key(self.api_key),
            "timeout_s": self.timeout_s,
            "limits": self.rate_limits.to_dict(),
        }


def validate_config_changes(config: Any, current: ProviderConfig | None = None) -> dict[str, Any]:
    """An UpdateProviderConfig body → the changes to apply; every bad field named at once.
    A `base_url` other than the current one needs an `api_key` in the same change: the
    stored key is never sent to a host it was not configured for."""
    errors: dict[str, str] = {}
    if not isinstance(config, dict) or not config:
        raise ValidationError("config must be a non-empty object", details={"config": "required"})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        errors["config"] = f"unknown field(s): {', '.join(unknown)}"
    if "api_key" in config and not (isinstance(config["api_key"], str)
                                    and MIN_API_KEY <= len(config["api_key"]) <= MAX_API_KEY):
        errors["api_key"] = f"a string of {MIN_API_KEY} to {MAX_API_KEY} characters"
    url = config.get("base_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        errors["base_url"] = "an http(s) URL"
    models = config.get("models")
    if models is not None and not (isinstance(models, dict) and all(
            k in TASK_TYPES and isinstance(v, str) and v for k, v in models.items())):
        errors["models"] = f"an object mapping {', '.join(TASK_TYPES)} to model names"
    timeout = config.get("timeout_s")
    if timeout is not None and not (is_number(timeout) and 1 <= timeout <= MAX_PROVIDER_TIMEOUT_S):
        errors["timeout_s"] = f"seconds from 1 to {MAX_PROVIDER_TIMEOUT_S:g}"
    if "enabled" in config and not isinstance(config["enabled"], bool):
        errors["enabled"] = "true or false"
    if "limits" in config:
        try:
            parse_limits(config["limits"])
        except ValidationError as exc:
            errors.update(exc.details)
    if errors:
        raise ValidationError("invalid provider config", details=errors)
    moved = "base_url" in config and (current is None or config["base_url"] != current.base_url)
    if moved and "api_key" not in config and (current is None or current.api_key):
        raise ApiKeyRequired("a new base_url needs its api_key in the same change: the stored key is never sent "
                             "to another host", details={"api_key": "required with a new base_url"})
    return {k: v for k, v in config.items() if k in CONFIG_KEYS}


def default_configs(names: tuple[str, ...], env: Mapping[str, str], *,
                    local_latency_ms: float = 0) -> list[ProviderConfig]:
    """Configs for the names in AII_PROVIDERS. `openai`, `anthropic` and `local` are known;
    any other name is an OpenAI-compatible endpoint configured by AII_PROVIDER_<NAME>_BASE_URL
    (and optionally _API_KEY). AII_PROVIDER_<NAME>_MODEL sets any provider's text and chat
    model. AII_PROVIDER_<NAME>_BATCH=1|0 turns its batch API on or off for the batch lane (on
    for openai and anthropic, off for OpenAI-compatible servers unless set)."""
    out = []
    for name in names:
        upper = name.upper().replace("-", "_")
        model = env.get(f"AII_PROVIDER_{upper}_MODEL")  # text and chat; each adapter has its default
        models = {"text_generation": model, "chat_completion": model} if model else {}
        limits = limits_from_env(upper, env).to_dict()
        limits = limits if any(limits.values()) else {}
        batch = env.get(f"AII_PROVIDER_{upper}_BATCH", "").strip()
        extra = {"batch": batch in ("1", "true", "yes")} if batch else {}
        if name == "local":
            out.append(ProviderConfig("local", "local", extra={"latency_ms": local_latency_ms}, limits=limits))
        elif name in ("openai", "anthropic"):
            out.append(ProviderConfig(name, name, api_key=env.get(f"{upper}_API_KEY"),
                                      base_url=env.get(f"{upper}_BASE_URL"), models=models, limits=limits,
                                      extra=extra))
        else:
            out.append(ProviderConfig(name, "openai_compatible", api_key=env.get(f"AII_PROVIDER_{upper}_API_KEY"),
                                      base_url=env.get(f"AII_PROVIDER_{upper}_BASE_URL"), models=models,
                                      limits=limits, extra=extra))
    return out
