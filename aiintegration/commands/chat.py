"""StartChatSession, SendChatMessage, CloseChatSession, and the streaming hooks that turn a
chat task's provider stream into `chat.response.*` events on the session's stream. A session
belongs to its caller's tenant; another tenant's session is answered like an unknown one."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.commands.create import create_generation_task, send_created
from aiintegration.commands.lifecycle import cancel_task, reason_text
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.chat import (
    CHAT_PRIORITY,
    HISTORY_TAIL,
    check_context,
    check_message,
    check_session_fields,
    context_text,
    merged_context,
    trimmed,
)
from aiintegration.domain.records import TaskRecord, iso
from aiintegration.domain.routing import Route
from aiintegration.errors import Conflict, NotFound
from aiintegration.providers.base import Generation
from aiintegration.store.chat import AnswerWriter, Session

log = logging.getLogger(__name__)


def start_chat_session(ctx: Context, user_id: Any, item_id: Any, initial_context: Any,
                       caller: Caller = TRUSTED) -> dict[str, Any]:
    check_session_fields(user_id, item_id)
    context = check_context(initial_context, "initial_context")
    session = {"id": str(uuid.uuid4()), "tenant": caller.tenant, "user_id": user_id, "item_id": item_id,
               "context": context, "status": "open", "created_at": time.time(), "closed_at": "", "close_reason": "",
               "inflight_task": "", "messages": 0, "tokens_in": 0, "tokens_out": 0}
    ctx.chats.create(session)
    return get_session(ctx, session["id"])


def _session(ctx: Context, session_id: str, caller: Caller) -> Session:
    session = ctx.chats.get(session_id)
    if session is None or not caller.sees(session.get("tenant") or "default"):
        raise NotFound(f"no chat session {session_id}")
    return session


def stats(session: Session) -> dict[str, Any]:
    end = session.get("closed_at") or time.time()
    return {"messages": int(session.get("messages") or 0), "tokens_in": int(session.get("tokens_in") or 0),
            "tokens_out": int(session.get("tokens_out") or 0),
            "duration_s": round(end - float(session["created_at"]), 3), "cost": 0.0}


def get_session(ctx: Context, session_id: str, caller: Caller = TRUSTED) -> dict[str, Any]:
    session = _session(ctx, session_id, caller)
    return {"id": session["id"], "tenant": session.get("tenant") or "default", "user_id": session["user_id"],
            "item_id": session["item_id"],
            "context": session["context"], "status": session["status"], "created_at": iso(session["created_at"]),
            "closed_at": iso(session.get("closed_at")), "close_reason": session.get("close_reason") or None,
            "history": ctx.chats.history(session_id), "stats": stats(session)}


def send_chat_message(ctx: Context, session_id: str, message: Any, include_context: Any = None,
                      caller: Caller = TRUSTED) -> dict[str, Any]:
    message = check_message(message)
    session = _session(ctx, session_id, caller)
    if session["status"] != "open":
        raise Conflict("the chat session is closed", details={"status": session["status"]})
    context = session["context"]
    if include_context is not None:  # checked whole, merged and sized before anything is written
        context = merged_context(context, check_context(include_context, "include_context"))
    message_id = str(uuid.uuid4())
    turn = {"message_id": message_id, "role": "user", "content": message, "at": iso(time.time())}
    history = [*ctx.chats.history(session_id, last=HISTORY_TAIL - 1), turn]
    # The task is stored (validated, its budget reserved) before the session is written and only
    # sent once it is: a refused send (422, 413, 429) leaves context and history as they were,
    # and no answer can be recorded before the message it answers.
    task_id, _ = create_generation_task(
        ctx, caller=Caller(session.get("tenant") or "default", caller.role), task_type="chat_completion",
        request_content={"messages": trimmed(context_text(context), history)}, requested_by=f"chat:{session_id}",
        priority=CHAT_PRIORITY, options={"stream": True}, chat=(session_id, message_id), enqueue=False)
    try:
        ctx.chats.append_message(session_id, turn)
        ctx.chats.update(session_id, inflight_task=task_id,
                         **({"context": context} if include_context is not None else {}))
        ctx.chats.touch(session_id)
        ctx.chats.emit(session_id, "chat.message", message_id=message_id, task_id=task_id, role="user")
    except Exception:
        _withdraw(ctx, task_id)
        raise
    send_created(ctx, task_id, CHAT_PRIORITY, Route("chat_completion", None))
    return {"message_id": message_id, "task_id": task_id}


def _withdraw(ctx: Context, task_id: str) -> None:
    """The stored answer task of a message that could not be written: cancelled (its budget
    given back), so it never answers a message the history does not hold. Best effort: if the
    store is down for this too, the pending sweep sends the task later."""
    try:
        cancel_task(ctx, task_id, "its chat message could not be stored")
    except Exception:  # noqa: BLE001 - the caller raises the first failure
        log.exception("could not withdraw the answer task of an unstored chat message", extra={"task_id": task_id})


def close_chat_session(ctx: Context, session_id: str, close_reason: Any, caller: Caller = TRUSTED) -> dict[str, Any]:
    blank = close_reason is None or (isinstance(close_reason, str) and not close_reason.strip())
    reason = "closed" if blank else reason_text(close_reason, "close_reason")  # optional, else checked as any reason
    session = _session(ctx, session_id, caller)
    if session["status"] != "open":
        raise Conflict("the chat session is already closed", details={"status": session["status"]})
    inflight = session.get("inflight_task")
    if inflight:
        try:
            cancel_task(ctx, inflight, "chat session closed")
        except (Conflict, NotFound):
            pass  # already finished
    session["closed_at"] = time.time()
    result = ctx.chats.close(session_id, reason, stats(session))
    if result != "ok":
        raise Conflict("the chat session is already closed", details={"status": result})
    return get_session(ctx, session_id)


class ChatStream:
    """Hooks for one attempt of a chat task: deltas, then completion or an explicit
    `chat.response.incomplete`, so a client never sees two answers spliced together.

    Deltas and the end are both written by the task's thread (the call hands its deltas over
    from the event loop); once the end is written the stream is closed, and a delta that
    arrives after it is dropped, never sent after it."""

    def __init__(self, ctx: Context, record: TaskRecord):
        self.ctx = ctx
        if record.chat_session_id is None or record.chat_message_id is None:
            raise ValueError(f"task {record.id} answers no chat message")
        self.session_id, self.message_id = record.chat_session_id, record.chat_message_id
        self.task_id, self.attempt, self.seq = record.id, record.attempts, 0
        self._lock, self._open = threading.Lock(), True
        self._writer: AnswerWriter = ctx.chats.answer_writer(self.session_id)

    def delta(self, text: str) -> None:
        with self._lock:
            if not self._open:
                return
            self.seq += 1
            self._writer.emit("chat.response.delta", message_id=self.message_id, task_id=self.task_id,
                              attempt=self.attempt, seq=self.seq, text=text)

    def close(self) -> None:
        """Idempotent; the task calls it however the attempt ended."""
        with self._lock:
            self._open = False
        self._writer.close()

    def completed(self, generation: Generation) -> None:
        self.close()
        usage = generation.usage
        self.ctx.chats.record_answer(self.session_id, {
            "message_id": self.message_id, "role": "assistant", "content": generation.text or "",
            "at": iso(time.time()), "task_id": self.task_id,
            "tokens": {"input": usage.input_tokens, "output": usage.output_tokens}},
            tokens_in=usage.input_tokens, tokens_out=usage.output_tokens)
        self.ctx.chats.touch(self.session_id)
        self.ctx.chats.emit(self.session_id, "chat.response.completed", message_id=self.message_id,
                            task_id=self.task_id, attempt=self.attempt, text=generation.text,
                            provider=generation.provider, model=generation.model,
                            usage={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens})

    def incomplete(self, reason: str) -> None:
        self.close()
        if self.seq:
            self.ctx.chats.emit(self.session_id, "chat.response.incomplete", message_id=self.message_id,
                                task_id=self.task_id, attempt=self.attempt, reason=reason)


def stream_for(ctx: Context, record: TaskRecord) -> ChatStream | None:
    """The chat hooks of a task that answers a chat message (linked by SendChatMessage, never
    by a caller's metadata); None for any other task."""
    return ChatStream(ctx, record) if record.chat_session_id and record.chat_message_id else None
