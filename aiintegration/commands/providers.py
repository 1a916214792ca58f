"""SwitchProvider and UpdateProviderConfig, and the provider overview operators see."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from aiintegration.commands.addresses import public_addresses
from aiintegration.commands.batches import follow_switch, regroup_retrying
from aiintegration.commands.context import Context
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.providers import ProviderConfig, redact_key, validate_config_changes
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import AIIntegrationError, Conflict, NotFound, ValidationError
from aiintegration.providers import build_provider

log = logging.getLogger(__name__)
REPIN_LIMIT = 10000


def quota_state(ctx: Context, config: ProviderConfig) -> dict[str, dict[str, Any]]:
    """What is left in the current window, per bucket ("*": the provider's shared one)."""
    limits = config.rate_limits
    out = {}
    for bucket, bucket_limits in [("*", limits.default), *limits.models.items()]:
        state = ctx.quotas.state(config.name, bucket, bucket_limits)
        out[bucket] = {"rpm": state.limits.rpm or None, "tpm": state.limits.tpm or None,
                       "requests": None if state.requests_left < 0 else state.requests_left,
                       "tokens": None if state.tokens_left < 0 else state.tokens_left,
                       "paused_s": round(state.paused_s, 3) or None}
    return out


def overview(ctx: Context) -> dict[str, Any]:
    """Order, configs (keys redacted), breakers, and each provider's quota: `limits` as
    configured, `remaining` in the current window (with the limits in force, learned from the
    provider's headers where none is configured)."""
    _, order, configs = ctx.providers.snapshot()
    rows = []
    for name in order + sorted(set(configs) - set(order)):
        cfg = configs.get(name)
        if cfg is None:
            continue
        breaker = ctx.breakers[name]
        buckets = quota_state(ctx, cfg)
        rows.append({**cfg.public(), "breaker": breaker.public_state(), "error_rate": breaker.error_rate(),
                     "remaining": buckets.pop("*"), **({"remaining_by_model": buckets} if buckets else {})})
    return {"order": order, "providers": rows}


def switch_provider(ctx: Context, from_provider: Any, to_provider: Any, reason: Any,
                    caller: Caller = TRUSTED) -> dict[str, Any]:
    """Move `to` ahead of `from` in the preference order and re-pin queued/retrying tasks
    pinned to `from`; running tasks finish where they are. Batch-lane tasks waiting for
    `from`'s batches follow (`follow_switch`): `regrouped` counts the unpinned ones moved."""
    caller.require_operator("switching providers")
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("reason is required", details={"reason": "a non-empty string"})
    for name in (from_provider, to_provider):
        if not isinstance(name, str) or ctx.providers.get(name) is None:
            raise NotFound(f"unknown provider {name!r}")
    target = ctx.providers.get(to_provider)
    if target is None:
        raise NotFound(f"unknown provider {to_provider!r}")
    if not target.enabled:
        raise Conflict(f"provider {to_provider!r} is disabled", details={"provider": to_provider})
    if ctx.breakers[to_provider].state(fresh=True) == "open":
        raise Conflict(f"provider {to_provider!r} has an open circuit breaker", details={"breaker": "open"})
    order = [n for n in ctx.providers.order() if n != to_provider]
    at = order.index(from_provider) if from_provider in order else 0
    order.insert(at, to_provider)
    ctx.providers.set_order(order)
    ctx.router.invalidate()
    repinned = 0
    for status in (TaskStatus.QUEUED, TaskStatus.RETRYING):
        for record in ctx.tasks.get_many(ctx.tasks.in_status(status, limit=REPIN_LIMIT)):
            if not record or record.status != status or record.pinned_provider != from_provider:
                continue
            if record.lane and status == TaskStatus.QUEUED:
                continue  # waiting in the lane (moved below, re-pin and all) or in a batch (stays with it)
            options = replace(record.options, provider=to_provider)
            lane = regroup_retrying(ctx, record, options) if record.lane else {}
            ctx.tasks.set_fields(record.id, options=options, provider=to_provider, **lane)
            repinned += 1
    lane_repinned, regrouped = follow_switch(ctx, from_provider, to_provider, limit=REPIN_LIMIT)
    repinned += lane_repinned
    ctx.events.append("provider.switched", from_provider=from_provider, to_provider=to_provider,
                      reason=reason.strip(), repinned=repinned, regrouped=regrouped, order=order)
    return {"order": order, "repinned": repinned, "regrouped": regrouped}


def check_provider_url(url: str, *, allow_private: bool) -> None:
    """A provider's new base_url resolves, and only to public addresses unless allowed (the
    live test that follows must not be a way to probe the service's own network). A refusal
    says its own reason: unparseable, not http(s), a bad port, or a private address."""
    try:
        public_addresses(url, allow_private=allow_private, field="base_url", setting="AII_PROVIDER_ALLOW_PRIVATE=1")
    except OSError:
        raise ValidationError("base_url does not resolve", details={"base_url": "cannot be resolved"}) from None


def update_provider_config(ctx: Context, provider: Any, config: Any, caller: Caller = TRUSTED) -> dict[str, Any]:
    """Validate, run a live connection test with the new settings, apply only if it passes,
    keep the previous version. The API key never leaves in a response, log or event, and a
    stored key is never sent to a host it was not configured for: a new `base_url` needs its
    `api_key` in the same change, and must not point inside the network unless
    AII_PROVIDER_ALLOW_PRIVATE is set. A failed test says what kind of failure it was, never
    what the remote host answered."""
    caller.require_operator("changing a provider's config")
    current = ctx.providers.get(provider) if isinstance(provider, str) else None
    if current is None:
        raise NotFound(f"unknown provider {provider!r}")
    changes = validate_config_changes(config, current)
    if changes.get("base_url"):
        check_provider_url(changes["base_url"], allow_private=ctx.settings.provider_allow_private)
    candidate = current.with_changes(**changes)
    if candidate.enabled:
        try:
            build_provider(candidate).check()
        except AIIntegrationError as exc:
            raise Conflict(f"the connection test failed ({exc.code})", details={"error": {
                "code": exc.code, "class": type(exc).__name__, "retryable": exc.retryable}, "applied": False}) from None
    version = ctx.providers.put(candidate)
    ctx.router.invalidate()
    changed = sorted(changes)
    ctx.events.append("provider.config_updated", provider=provider, version=version, changed=changed,
                      api_key=redact_key(candidate.api_key))
    log.info("provider %s config updated (version %s, fields %s)", provider, version, changed)
    return {**candidate.public(), "version": version}
