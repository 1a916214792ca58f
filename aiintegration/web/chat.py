"""`/v1/chat/sessions`: deep-dive chat about one item, answers streamed as events."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from marshmallow import Schema, fields, validate

from aiintegration.commands import chat, feeds
from aiintegration.domain import limits
from aiintegration.web.blueprint import Blueprint
from aiintegration.web.current import caller, context
from aiintegration.web.events import last_event_id, sse
from aiintegration.web.responses import MessageAcceptedSchema, SessionSchema

blp = Blueprint("chat", __name__, url_prefix="/v1/chat/sessions", description="Chat sessions")
SECURED: dict[str, Any] = {"security": [{"bearer": []}]}


class AnyJson(fields.Field[Any]):
    """An object or a string (the chat context)."""


class StartSchema(Schema):
    user_id = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_NAME))
    item_id = fields.String(required=True, validate=validate.Length(min=1, max=limits.MAX_NAME))
    initial_context = AnyJson(required=True)


class MessageSchema(Schema):
    message = fields.String(required=True)
    include_context = AnyJson(allow_none=True)


class CloseSchema(Schema):
    close_reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=limits.MAX_REASON),
                                 metadata={"description": 'optional; "closed" when missing or blank'})


def _json(payload: Any, status: int = 200) -> Response:
    resp = jsonify(payload)
    resp.status_code = status
    return resp


@blp.route("", methods=["POST"])
@blp.arguments(StartSchema)
@blp.alt_response(201, schema=SessionSchema, success=True, description="The new session")
@blp.doc(**SECURED)
def start(body: dict[str, Any]) -> Response:
    """Start a session (StartChatSession); the context becomes the system prompt."""
    return _json(chat.start_chat_session(context(), body["user_id"], body["item_id"], body["initial_context"],
                                         caller()), 201)


@blp.route("/<uuid:session_id>")
@blp.alt_response(200, schema=SessionSchema, success=True, description="The session")
@blp.doc(**SECURED)
def get(session_id: Any) -> Response:
    """The session with its history and stats."""
    return _json(chat.get_session(context(), str(session_id), caller()))


@blp.route("/<uuid:session_id>/messages", methods=["POST"])
@blp.arguments(MessageSchema)
@blp.alt_response(202, schema=MessageAcceptedSchema, success=True, description="Accepted; the answer streams as events")
@blp.doc(**SECURED)
def message(body: dict[str, Any], session_id: Any) -> Response:
    """Send a message (SendChatMessage); the answer streams on the session's events."""
    return _json(chat.send_chat_message(context(), str(session_id), body["message"], body.get("include_context"),
                                        caller()), 202)


@blp.route("/<uuid:session_id>/close", methods=["POST"])
@blp.arguments(CloseSchema)
@blp.alt_response(200, schema=SessionSchema, success=True, description="The closed session")
@blp.doc(**SECURED)
def close(body: dict[str, Any], session_id: Any) -> Response:
    """Close the session (CloseChatSession): cancels an answer in flight, returns the stats."""
    return _json(chat.close_chat_session(context(), str(session_id), body["close_reason"], caller()))


@blp.route("/<uuid:session_id>/events")
@blp.doc(**SECURED)
def events(session_id: Any) -> Response:
    """SSE: chat.message, chat.response.delta/completed/incomplete, chat.session_closed."""
    return sse(feeds.open_session_feed(context(), str(session_id), last_event_id(), caller()))
