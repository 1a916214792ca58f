"""StartChatSession, SendChatMessage, CloseChatSession, and the streaming hooks that turn a
chat task's provider stream into `chat.response.*` events on the session's stream."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.lifecycle import cancel_task
from aiintegration.domain.records import iso
from aiintegration.errors import Conflict, NotFound, PayloadTooLarge, ValidationError
from aiintegration.providers.base import Generation
from aiintegration.store.chat import ChatStore

MAX_MESSAGE_CHARS = 32 * 1024
MAX_CONTEXT_BYTES = 64 * 1024
CONTEXT_TOKENS = 8000  # history budget; the oldest turns go first, the system context stays
CHAT_PRIORITY = 8


def chat_store(ctx: Context) -> ChatStore:
    s = ctx.settings
    return ctx.once("chat", lambda: ChatStore(ctx.redis, prefix=s.key_prefix, retention_s=s.retention_s))


def _context_text(context: Any) -> str:
    return context if isinstance(context, str) else json.dumps(context, ensure_ascii=False, indent=1)


def _check_context(value: Any, field: str) -> None:
    if not isinstance(value, dict | str):
        raise ValidationError(f"{field} must be an object or a string", details={field: "object or string"})
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_CONTEXT_BYTES:
        raise PayloadTooLarge(f"{field} is over {MAX_CONTEXT_BYTES // 1024} KiB", details={field: "too large"})


def start_chat_session(ctx: Context, user_id: Any, item_id: Any, initial_context: Any) -> dict[str, Any]:
    errors = {f: "a non-empty string of at most 200 characters" for f, v in (("user_id", user_id), ("item_id", item_id))
              if not (isinstance(v, str) and v.strip() and len(v) <= 200)}
    if errors:
        raise ValidationError("invalid chat session", details=errors)
    _check_context(initial_context, "initial_context")
    session = {"id": str(uuid.uuid4()), "user_id": user_id, "item_id": item_id, "context": initial_context,
               "status": "open", "created_at": time.time(), "closed_at": "", "close_reason": "", "inflight_task": "",
               "messages": 0, "tokens_in": 0, "tokens_out": 0}
    chat_store(ctx).create(session)
    return get_session(ctx, session["id"])


def _session(ctx: Context, session_id: str) -> dict[str, Any]:
    session = chat_store(ctx).get(session_id)
    if session is None:
        raise NotFound(f"no chat session {session_id}")
    return session


def stats(session: dict[str, Any]) -> dict[str, Any]:
    end = session.get("closed_at") or time.time()
    return {"messages": int(session.get("messages") or 0), "tokens_in": int(session.get("tokens_in") or 0),
            "tokens_out": int(session.get("tokens_out") or 0),
            "duration_s": round(end - float(session["created_at"]), 3), "cost": 0.0}


def get_session(ctx: Context, session_id: str) -> dict[str, Any]:
    session = _session(ctx, session_id)
    return {"id": session["id"], "user_id": session["user_id"], "item_id": session["item_id"],
            "context": session["context"], "status": session["status"], "created_at": iso(session["created_at"]),
            "closed_at": iso(session.get("closed_at")), "close_reason": session.get("close_reason") or None,
            "history": chat_store(ctx).history(session_id), "stats": stats(session)}


def trimmed(system: str, history: list[dict[str, Any]], budget_tokens: int = CONTEXT_TOKENS) -> list[dict[str, str]]:
    """System context plus as many of the latest turns as fit (about 4 characters a token)."""
    budget = budget_tokens * 4 - len(system)
    kept: list[dict[str, str]] = []
    for message in reversed(history):
        budget -= len(message["content"])
        if budget < 0 and kept:
            break
        kept.append({"role": message["role"], "content": message["content"]})
    return [{"role": "system", "content": system}, *reversed(kept)]


def send_chat_message(ctx: Context, session_id: str, message: Any, include_context: Any = None) -> dict[str, Any]:
    if not isinstance(message, str) or not message.strip():
        raise ValidationError("message must be a non-empty string", details={"message": "required"})
    if len(message) > MAX_MESSAGE_CHARS:
        raise PayloadTooLarge(f"message is over {MAX_MESSAGE_CHARS} characters", details={"message": "too large"})
    store = chat_store(ctx)
    session = _session(ctx, session_id)
    if session["status"] != "open":
        raise Conflict("the chat session is closed", details={"status": session["status"]})
    if include_context is not None:
        _check_context(include_context, "include_context")
        context = session["context"]
        if isinstance(context, dict) and isinstance(include_context, dict):
            context = {**context, **include_context}
        else:
            context = f"{_context_text(context)}\n\n{_context_text(include_context)}"
        store.update(session_id, context=context)
        session["context"] = context
    message_id = str(uuid.uuid4())
    user_message = {"message_id": message_id, "role": "user", "content": message, "at": iso(time.time())}
    store.append_message(session_id, user_message)
    messages = trimmed(_context_text(session["context"]), store.history(session_id))
    task_id, _ = create_generation_task(
        ctx, task_type="chat_completion", request_content={"messages": messages}, requested_by=f"chat:{session_id}",
        priority=CHAT_PRIORITY, metadata={"chat_session_id": session_id, "chat_message_id": message_id},
        options={"stream": True})
    store.update(session_id, inflight_task=task_id)
    store.emit(session_id, "chat.message", message_id=message_id, task_id=task_id, role="user")
    return {"message_id": message_id, "task_id": task_id}


def close_chat_session(ctx: Context, session_id: str, close_reason: Any) -> dict[str, Any]:
    reason = close_reason.strip() if isinstance(close_reason, str) and close_reason.strip() else "closed"
    session = _session(ctx, session_id)
    if session["status"] != "open":
        raise Conflict("the chat session is already closed", details={"status": session["status"]})
    inflight = session.get("inflight_task")
    if inflight:
        try:
            cancel_task(ctx, inflight, "chat session closed")
        except (Conflict, NotFound):
            pass  # already finished
    session["closed_at"] = time.time()
    result = chat_store(ctx).close(session_id, reason, stats(session))
    if result != "ok":
        raise Conflict("the chat session is already closed", details={"status": result})
    return get_session(ctx, session_id)


class ChatStream:
    """Hooks for one attempt of a chat task: deltas, then completion or an explicit
    `chat.response.incomplete`, so a client never sees two answers spliced together.

    Deltas come from the provider call's thread, the end from the task's thread; a call that
    was stopped (cancel, timeout) may still be between two chunks when the end is written,
    so the end closes the stream first and a late delta is dropped, never sent after it."""

    def __init__(self, ctx: Context, record: dict[str, Any]):
        meta = record.get("metadata") or {}
        self.ctx, self.store = ctx, chat_store(ctx)
        self.session_id, self.message_id = meta["chat_session_id"], meta["chat_message_id"]
        self.task_id, self.attempt, self.seq = record["id"], record.get("attempts"), 0
        self._lock, self._open = threading.Lock(), True
        self._conn: Any = None  # the answer's own Redis connection, taken at the first delta

    def delta(self, text: str) -> None:
        with self._lock:
            if not self._open:
                return
            self.seq += 1
            if self._conn is None:
                self._conn = self.ctx.redis.connection_pool.get_connection()
            self.store.emit_on(self._conn, self.session_id, "chat.response.delta", message_id=self.message_id,
                               task_id=self.task_id, attempt=self.attempt, seq=self.seq, text=text)

    def _close(self) -> None:
        with self._lock:
            self._open = False
            conn, self._conn = self._conn, None
        if conn is not None:
            self.ctx.redis.connection_pool.release(conn)

    def close(self) -> None:
        """Idempotent; the task calls it however the attempt ended."""
        self._close()

    def completed(self, generation: Generation) -> None:
        self._close()
        store, sid = self.store, self.session_id
        store.append_message(sid, {"message_id": self.message_id, "role": "assistant", "content": generation.text or "",
                                   "at": iso(time.time()), "task_id": self.task_id,
                                   "tokens": {"input": generation.usage.input_tokens,
                                              "output": generation.usage.output_tokens}})
        pipe = self.ctx.redis.pipeline()
        pipe.hincrby(store.key(sid), "messages", 2)
        pipe.hincrby(store.key(sid), "tokens_in", generation.usage.input_tokens)
        pipe.hincrby(store.key(sid), "tokens_out", generation.usage.output_tokens)
        pipe.hset(store.key(sid), "inflight_task", "")
        pipe.execute()
        store.emit(sid, "chat.response.completed", message_id=self.message_id, task_id=self.task_id,
                   attempt=self.attempt, text=generation.text, provider=generation.provider, model=generation.model,
                   usage={"input_tokens": generation.usage.input_tokens,
                          "output_tokens": generation.usage.output_tokens})

    def incomplete(self, reason: str) -> None:
        self._close()
        if self.seq:
            self.store.emit(self.session_id, "chat.response.incomplete", message_id=self.message_id,
                            task_id=self.task_id, attempt=self.attempt, reason=reason)


def stream_for(ctx: Context, record: dict[str, Any]) -> ChatStream | None:
    meta = record.get("metadata") or {}
    return ChatStream(ctx, record) if "chat_session_id" in meta and "chat_message_id" in meta else None
