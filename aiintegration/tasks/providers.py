"""Provider management commands as Celery tasks (stable names)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from aiintegration.commands import providers
from aiintegration.commands.context import get_context
from aiintegration.tasks import CALLER_ERRORS, error_result, policy


@shared_task(name="aiintegration.switch_provider", **policy(answered=True))
def switch_provider(from_provider: str, to_provider: str, reason: str) -> dict[str, Any]:
    try:
        return {"ok": True, **providers.switch_provider(get_context(), from_provider, to_provider, reason)}
    except CALLER_ERRORS as exc:
        return error_result(exc)


@shared_task(name="aiintegration.update_provider_config", **policy(answered=True))
def update_provider_config(provider: str, config: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "provider": providers.update_provider_config(get_context(), provider, config)}
    except CALLER_ERRORS as exc:
        return error_result(exc)
