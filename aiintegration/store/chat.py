"""Chat sessions in Redis: the session hash (`Keys.chat`), its history (a list of JSON
messages, `Keys.chat_messages`) and its event stream (`Keys.chat_stream`)."""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any, cast

import redis

from aiintegration.domain.chat import HISTORY_KEPT
from aiintegration.domain.records import dumps, iso
from aiintegration.store import streams
from aiintegration.store.keys import Keys
from aiintegration.store.streams import Rows, stream_after

JSON_FIELDS = ("context", "stats")
Session = dict[str, Any]

# KEYS: session, stream, history. ARGV: now, iso, close_reason, retention, maxlen, event data
CLOSE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'open' then return redis.call('HGET', KEYS[1], 'status') or '' end
redis.call('HSET', KEYS[1], 'status', 'closed', 'closed_at', ARGV[1], 'close_reason', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'chat.session_closed', 'data', ARGV[6])
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[4]) end
return 'ok'
"""


class ChatStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, retention_s: int = 604800, idle_ttl_s: int = 604800,
                 stream_maxlen: int = 10000):
        self.r, self.keys, self.retention_s, self.maxlen = client, keys, retention_s, stream_maxlen
        self.idle_ttl_s = idle_ttl_s
        self._close = client.register_script(CLOSE)

    def _session_keys(self, session_id: str) -> list[str]:
        return [self.keys.chat(session_id), self.keys.chat_stream(session_id), self.keys.chat_messages(session_id)]

    def touch(self, session_id: str) -> None:
        """Activity: an open session expires AII_CHAT_IDLE_TTL_S after the last one."""
        pipe = self.r.pipeline(transaction=False)
        for key in self._session_keys(session_id):
            pipe.expire(key, self.idle_ttl_s)
        pipe.execute()

    def event_data(self, event: str, session_id: str, **fields: Any) -> str:
        return dumps({"type": event, "at": iso(time.time()), "session_id": session_id, **fields})

    def create(self, session: Session) -> None:
        sid = session["id"]
        pipe = self.r.pipeline()
        pipe.hset(self.keys.chat(sid), mapping={k: dumps(v) if k in JSON_FIELDS else v for k, v in session.items()})
        pipe.xadd(self.keys.chat_stream(sid), {"type": "chat.session_started", "data": self.event_data(
            "chat.session_started", sid, user_id=session["user_id"], item_id=session["item_id"])},
            maxlen=self.maxlen, approximate=True)
        for key in self._session_keys(sid)[:2]:
            pipe.expire(key, self.idle_ttl_s)
        pipe.execute()

    def get(self, session_id: str) -> Session | None:
        raw = cast(dict[str, str], self.r.hgetall(self.keys.chat(session_id)))
        if not raw or not raw.get("created_at"):  # a field written after the session expired is not one
            return None
        out: Session = {k: json.loads(v) if k in JSON_FIELDS else v for k, v in raw.items()}
        for k in ("created_at", "closed_at"):
            out[k] = float(out[k]) if out.get(k) else None
        return out

    def update(self, session_id: str, **fields: Any) -> None:
        self.r.hset(self.keys.chat(session_id), mapping={
            k: dumps(v) if k in JSON_FIELDS else ("" if v is None else v) for k, v in fields.items()})

    def append_message(self, session_id: str, message: dict[str, Any]) -> None:
        pipe = self.r.pipeline()
        self._append(pipe, session_id, message)
        pipe.execute()

    def _append(self, pipe: Any, session_id: str, message: dict[str, Any]) -> None:
        """The message joins the history, which keeps its latest HISTORY_KEPT."""
        pipe.rpush(self.keys.chat_messages(session_id), dumps(message))
        pipe.ltrim(self.keys.chat_messages(session_id), -HISTORY_KEPT, -1)

    def history(self, session_id: str, *, last: int | None = None) -> list[dict[str, Any]]:
        """The messages, oldest first; with `last`, only that many of the latest."""
        start = -last if last else 0
        return [json.loads(m) for m in cast(list[str], self.r.lrange(self.keys.chat_messages(session_id), start, -1))]

    def record_answer(self, session_id: str, message: dict[str, Any], *, tokens_in: int, tokens_out: int) -> None:
        """The assistant's answer joins the history; the session's stats count the turn."""
        key = self.keys.chat(session_id)
        pipe = self.r.pipeline()
        self._append(pipe, session_id, message)
        pipe.hincrby(key, "messages", 2)
        pipe.hincrby(key, "tokens_in", tokens_in)
        pipe.hincrby(key, "tokens_out", tokens_out)
        pipe.hset(key, "inflight_task", "")
        pipe.execute()

    def emit(self, session_id: str, event: str, **fields: Any) -> str:
        return str(self.r.xadd(self.keys.chat_stream(session_id), {"type": event, "data": self.event_data(
            event, session_id, **fields)}, maxlen=self.maxlen, approximate=True))

    def answer_writer(self, session_id: str) -> AnswerWriter:
        return AnswerWriter(self, session_id)

    def reader(self, session_id: str) -> streams.StreamReader:
        return streams.StreamReader(self.r, self.keys.chat_stream(session_id))

    def final_events(self, session_id: str, after: str) -> Rows | None:
        """None while the session is open; once closed, its events after stream id `after`."""
        if self.r.hget(self.keys.chat(session_id), "status") != "closed":
            return None
        return stream_after(self.r, self.keys.chat_stream(session_id), after)

    def close(self, session_id: str, reason: str, stats: dict[str, Any]) -> str:
        now = time.time()
        data = self.event_data("chat.session_closed", session_id, reason=reason, stats=stats)
        return str(self._close(keys=self._session_keys(session_id), args=[now, iso(now) or "", reason, self.retention_s, self.maxlen, data]))


class AnswerWriter:
    """A streamed answer's events on one connection held for the whole answer, taken at the
    first event and given back on close (store/streams.py: ~0.1 ms less CPU per chunk)."""

    def __init__(self, store: ChatStore, session_id: str):
        self.store, self.session_id = store, session_id
        self._conn: Any = None

    def emit(self, event: str, **fields: Any) -> str:
        if self._conn is None:
            self._conn = self.store.r.connection_pool.get_connection()
        store = self.store
        return str(streams.command(self._conn, "XADD", store.keys.chat_stream(self.session_id), "MAXLEN", "~",
                                   store.maxlen, "*", "type", event,
                                   "data", store.event_data(event, self.session_id, **fields)))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.store.r.connection_pool.release(conn)

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
