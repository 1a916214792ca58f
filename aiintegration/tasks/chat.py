"""The chat commands as Celery tasks (stable names)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from aiintegration.commands import chat
from aiintegration.commands.context import get_context
from aiintegration.tasks import CALLER_ERRORS, error_result, policy


@shared_task(name="aiintegration.start_chat_session", **policy(answered=True))
def start_chat_session(user_id: str, item_id: str, initial_context: Any) -> dict[str, Any]:
    try:
        return {"ok": True, "session": chat.start_chat_session(get_context(), user_id, item_id, initial_context)}
    except CALLER_ERRORS as exc:
        return error_result(exc)


@shared_task(name="aiintegration.send_chat_message", **policy(answered=True))
def send_chat_message(session_id: str, message: str, include_context: Any = None) -> dict[str, Any]:
    try:
        return {"ok": True, **chat.send_chat_message(get_context(), session_id, message, include_context)}
    except CALLER_ERRORS as exc:
        return error_result(exc)


@shared_task(name="aiintegration.close_chat_session", **policy(answered=True))
def close_chat_session(session_id: str, close_reason: str) -> dict[str, Any]:
    try:
        return {"ok": True, "session": chat.close_chat_session(get_context(), session_id, close_reason)}
    except CALLER_ERRORS as exc:
        return error_result(exc)
