"""SwitchProvider and UpdateProviderConfig, and the provider overview operators see."""

from __future__ import annotations

import logging
from typing import Any

from aiintegration.commands.breaker import breaker_for
from aiintegration.commands.context import Context
from aiintegration.commands.create import router
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import AIIntegrationError, Conflict, NotFound, ValidationError
from aiintegration.providers import build_provider
from aiintegration.providers.base import TASK_TYPES, redact_key

log = logging.getLogger(__name__)
CONFIG_KEYS = {"api_key", "base_url", "models", "timeout_s", "enabled"}


def overview(ctx: Context) -> dict[str, Any]:
    _, order, configs = ctx.providers.snapshot()
    rows = []
    for name in order + sorted(set(configs) - set(order)):
        cfg = configs.get(name)
        if cfg is None:
            continue
        breaker = breaker_for(ctx, name)
        rows.append({**cfg.public(), "breaker": breaker.public_state(), "error_rate": breaker.error_rate()})
    return {"order": order, "providers": rows}


def switch_provider(ctx: Context, from_provider: Any, to_provider: Any, reason: Any) -> dict[str, Any]:
    """Move `to` ahead of `from` in the preference order and re-pin queued/retrying tasks
    pinned to `from`; running tasks finish where they are."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("reason is required", details={"reason": "a non-empty string"})
    order = ctx.providers.order()
    for name in (from_provider, to_provider):
        if not isinstance(name, str) or ctx.providers.get(name) is None:
            raise NotFound(f"unknown provider {name!r}")
    target = ctx.providers.get(to_provider)
    assert target is not None
    if not target.enabled:
        raise Conflict(f"provider {to_provider!r} is disabled", details={"provider": to_provider})
    if breaker_for(ctx, to_provider).state(fresh=True) == "open":
        raise Conflict(f"provider {to_provider!r} has an open circuit breaker", details={"breaker": "open"})
    order = [n for n in order if n != to_provider]
    at = order.index(from_provider) if from_provider in order else 0
    order.insert(at, to_provider)
    ctx.providers.set_order(order)
    repinned = 0
    for status in (TaskStatus.QUEUED, TaskStatus.RETRYING):
        ids = [i for i, _ in ctx.tasks.ids_by_score(f"status:{status}", max_score=float("inf"), limit=10000)]
        for record in ctx.tasks.get_many(ids):
            if record and record["status"] == status and (record.get("options") or {}).get("provider") == from_provider:
                options = {**record["options"], "provider": to_provider}
                ctx.tasks.set_fields(record["id"], options=options, provider=to_provider)
                repinned += 1
    router(ctx).invalidate()
    ctx.tasks.append_global("provider.switched", from_provider=from_provider, to_provider=to_provider,
                            reason=reason.strip(), repinned=repinned, order=order)
    return {"order": order, "repinned": repinned}


def _validated(config: Any) -> dict[str, Any]:
    errors: dict[str, str] = {}
    if not isinstance(config, dict) or not config:
        raise ValidationError("config must be a non-empty object", details={"config": "required"})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        errors["config"] = f"unknown field(s): {', '.join(unknown)}"
    if "api_key" in config and not (isinstance(config["api_key"], str) and 8 <= len(config["api_key"]) <= 500):
        errors["api_key"] = "a string of 8 to 500 characters"
    url = config.get("base_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        errors["base_url"] = "an http(s) URL"
    models = config.get("models")
    if models is not None and not (isinstance(models, dict) and all(
            k in TASK_TYPES and isinstance(v, str) and v for k, v in models.items())):
        errors["models"] = f"an object mapping {', '.join(TASK_TYPES)} to model names"
    timeout = config.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 3600):
        errors["timeout_s"] = "seconds from 1 to 3600"
    if "enabled" in config and not isinstance(config["enabled"], bool):
        errors["enabled"] = "true or false"
    if errors:
        raise ValidationError("invalid provider config", details=errors)
    return config


def update_provider_config(ctx: Context, provider: Any, config: Any) -> dict[str, Any]:
    """Validate, run a live connection test with the new settings, apply only if it passes,
    keep the previous version. The API key never leaves in a response, log or event."""
    current = ctx.providers.get(provider) if isinstance(provider, str) else None
    if current is None:
        raise NotFound(f"unknown provider {provider!r}")
    changes = _validated(config)
    candidate = current.with_changes(**changes)
    if candidate.enabled:
        try:
            build_provider(candidate).check()
        except AIIntegrationError as exc:
            raise Conflict(f"the connection test failed: {exc.message}",
                           details={"error": exc.to_dict(), "applied": False}) from None
    version = ctx.providers.put(candidate)
    router(ctx).invalidate()
    changed = sorted(changes)
    ctx.tasks.append_global("provider.config_updated", provider=provider, version=version, changed=changed,
                            api_key=redact_key(candidate.api_key))
    log.info("provider %s config updated (version %s, fields %s)", provider, version, changed)
    return {**candidate.public(), "version": version}
