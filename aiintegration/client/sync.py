"""`Client`: the REST API from a blocking Python service (httpx, retries by stamina)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing
from functools import partial
from typing import Any, TypeVar

import httpx
import stamina

from aiintegration.client.protocol import (
    FINISHED,
    SESSION_ENDS,
    TASK_ENDS,
    Answer,
    AnswerView,
    Record,
    RetryPolicy,
    Settle,
    error_from_answer,
    outcome,
    retry_on,
    submission,
    unreachable,
)
from aiintegration.client.sse import Cursor, Decoder, Event
from aiintegration.errors import AIIntegrationError, ServiceUnavailable, WaitTimedOut

T = TypeVar("T")
# Failures before the request left: safe to repeat any call. The rest may have reached the server.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.ProtocolError, httpx.ProxyError)


class Client:
    """The aiintegration REST API. Every call is retried on connection errors and 502/503/504
    (`retry`); `submit` sends an Idempotency-Key so a retried submission creates one task."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retry: RetryPolicy | None = None,
                 poll_interval: float = 0.5, headers: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self._timeout = timeout
        self._retrying = stamina.RetryingCaller(**self.retry_policy.stamina_kwargs())
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}", **(headers or {})})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- tasks ---------------------------------------------------------------------------

    def submit(self, task_type: str = "text_generation", *, request_content: dict[str, Any], requested_by: str,
               priority: int = 5, metadata: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
               idempotency_key: str | None = None) -> Record:
        """Create a task and return its record (a repeat of `idempotency_key` returns the first)."""
        body = submission(task_type, request_content, requested_by, priority, metadata, options)
        key = idempotency_key or str(uuid.uuid4())
        answer = self._call(lambda: self._once("POST", "/v1/tasks", json=body, headers={"Idempotency-Key": key}))
        created: Record = answer.json()
        return created if answer.status_code == 200 else self.get(created["id"])

    def get(self, task_id: str) -> Record:
        """The task's record."""
        record: Record = self._call(lambda: self._once("GET", f"/v1/tasks/{task_id}")).json()
        return record

    def list(self, **filters: str | int) -> Iterator[Record]:
        """Every task matching `filters` (status, requested_by; limit = page size), newest
        first, fetching the next page as the last one runs out."""
        params: dict[str, str | int] = dict(filters)
        while True:
            page = self._call(partial(self._once, "GET", "/v1/tasks", params=params)).json()
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def cancel(self, task_id: str, reason: str) -> Record:
        """Cancel a queued or running task; its record. Conflict if it already finished."""
        return self._settled(f"/v1/tasks/{task_id}/cancel", {"cancellation_reason": reason}, lambda: self.get(task_id))

    def retry(self, task_id: str, reason: str, delay: float | None = None) -> Record:
        """Run a dead-lettered or timed-out task again under its id (after `delay` seconds)."""
        return self._settled(f"/v1/tasks/{task_id}/retry", {"retry_reason": reason, "delay": delay},
                             lambda: self.get(task_id))

    def wait(self, task_id: str, *, timeout: float = 300.0) -> Record:
        """The task's record once it succeeded. Follows its event feed (polls if the feed
        fails); raises what it failed with (e.g. InvalidRequest, TaskCancelled, TaskTimedOut,
        with `.code` and the provider's message), or WaitTimedOut after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Event | None = None
        try:
            for item in self._follow(f"/v1/tasks/{task_id}/events", ends=TASK_ENDS, deadline=deadline,
                                     what=f"task {task_id}", done=lambda: True):
                last = item if isinstance(item, dict) else last
        except ServiceUnavailable:
            pass  # the feed is failing: the record has the answer too
        while True:
            record = self.get(task_id)
            if record["status"] in FINISHED:
                return outcome(record, last["data"] if last else None)
            if time.monotonic() >= deadline:
                raise WaitTimedOut(f"task {task_id} is still {record['status']} after {timeout:g} s",
                                   details={"task_id": task_id, "status": record["status"]})
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The task's events (`{"id", "event", "data"}`) from the first (or after
        `last_event_id`) to its terminal one, resuming by itself after a dropped connection."""
        for item in self._follow(f"/v1/tasks/{task_id}/events", ends=TASK_ENDS, last_id=last_event_id,
                                 done=lambda: self.get(task_id)["status"] in FINISHED):
            if isinstance(item, dict):
                yield item

    # -- chat ----------------------------------------------------------------------------

    def chat(self, *, user_id: str, item_id: str, initial_context: dict[str, Any] | str) -> ChatSession:
        """Start a chat session about one item; the context becomes its system prompt."""
        body = {"user_id": user_id, "item_id": item_id, "initial_context": initial_context}
        session: Record = self._call(lambda: self._once("POST", "/v1/chat/sessions", json=body),
                                     idempotent=False).json()
        return ChatSession(self, session)

    # -- plumbing ------------------------------------------------------------------------

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; an error answer or a transport failure raised as the error tree."""
        try:
            answer = self._http.request(method, path, **kwargs)
        except NOT_SENT as exc:
            raise unreachable(self.base_url + path, exc, sent=False) from exc
        except TRANSPORT as exc:
            raise unreachable(self.base_url + path, exc, sent=True) from exc
        if answer.is_error:
            raise error_from_answer(answer.status_code, answer.content, answer.headers.get("Retry-After"))
        return answer

    def _call(self, once: Callable[[], T], *, idempotent: bool = True) -> T:
        return self._retrying(retry_on(idempotent=idempotent), once)

    def _settled(self, path: str, body: dict[str, Any], current: Callable[[], Record]) -> Record:
        """A state change, retried: a 409 after an attempt that may have applied it (sent, its
        answer lost) means it was, and the `current` state is the answer."""
        settle = Settle()

        def once() -> Record | None:
            try:
                record: Record = self._once("POST", path, json=body).json()
                return record
            except AIIntegrationError as exc:
                if settle.absorbs(exc):
                    return None
                settle.failed(exc)
                raise

        record = self._call(once)
        return record if record is not None else current()

    def _open(self, path: str, cursor: Cursor) -> httpx.Response:
        headers = {"Last-Event-ID": cursor.last_id} if cursor.last_id else {}
        timeout = httpx.Timeout(self._timeout, read=cursor.read_timeout())

        def once() -> httpx.Response:
            request = self._http.build_request("GET", path, headers=headers, timeout=timeout)
            try:
                answer = self._http.send(request, stream=True)
            except NOT_SENT as exc:
                raise unreachable(self.base_url + path, exc, sent=False) from exc
            except TRANSPORT as exc:
                raise unreachable(self.base_url + path, exc, sent=True) from exc
            if answer.is_error:
                answer.read()
                answer.close()
                raise error_from_answer(answer.status_code, answer.content, answer.headers.get("Retry-After"))
            return answer

        return self._call(once)

    def _follow(self, path: str, *, ends: frozenset[str], last_id: str | None = None,
                deadline: float | None = None, what: str = "the event feed",
                done: Callable[[], bool] | None = None) -> Generator[Event | str, None, None]:
        """A feed's new events, and its heartbeat comments (str), across as many connections as
        it takes: each resumes after the last event handed out, so none is lost or repeated.
        A feed that ends at once with nothing new is over if `done()` says so (resumed past
        its terminal event), else it is a stall."""
        cursor = Cursor(last_id, ends=ends, max_stalls=self.retry_policy.attempts, deadline=deadline, what=what)
        while not cursor.ended:
            answer, decoder, cause, stale = self._open(path, cursor), Decoder(), None, False
            try:
                for line in answer.iter_lines():
                    item = decoder.feed(line)
                    if isinstance(item, str) or (item is not None and cursor.accept(item)):
                        yield item
                        if cursor.ended or (stale := cursor.stale()):
                            break
            except TRANSPORT as exc:
                cause = exc
            finally:
                answer.close()
            if cursor.ended or stale:
                continue
            if cause is None and cursor.quiet and done is not None and done():
                return
            time.sleep(cursor.disconnected(cause, decoder.retry_ms))


class ChatReply(AnswerView, Iterator[str]):
    """The answer to one chat message, as it streams: iterate for its text deltas. Afterwards
    `text` is the whole answer and `completed` the `chat.response.completed` event's data."""

    def __init__(self, session: ChatSession, message_id: str, task_id: str, deadline: float) -> None:
        self.answer = Answer(message_id, task_id)
        self._deltas = self._stream(session, deadline)

    def __next__(self) -> str:
        return next(self._deltas)

    def _stream(self, session: ChatSession, deadline: float) -> Iterator[str]:
        client, answer = session.client, self.answer
        feed = client._follow(f"/v1/chat/sessions/{session.id}/events", ends=SESSION_ENDS,
                              last_id=session.last_event_id, deadline=deadline,
                              what=f"the answer to message {answer.message_id}")
        with closing(feed):  # the feed's connection goes as soon as the answer is over
            for item in feed:
                if isinstance(item, str):  # a heartbeat: is the task still alive? (it may fail before any delta)
                    if error := answer.failed(client.get(answer.task_id)):
                        raise error
                    continue
                if (delta := answer.take(item)) is not None:
                    yield delta
                elif answer.completed is not None:
                    session.last_event_id = answer.last_event_id
                    return


class ChatSession:
    """An open chat session: `send` a message and iterate the answer; `close` it."""

    def __init__(self, client: Client, session: Record) -> None:
        self.client = client
        self.id: str = session["id"]
        self.record = session
        self.last_event_id: str | None = None  # the session feed is read from here on

    def send(self, message: str, *, include_context: dict[str, Any] | str | None = None,
             timeout: float = 300.0) -> ChatReply:
        """Send `message` now; the reply iterates the answer's text deltas until it completed.
        Raises on `chat.response.incomplete`, a failed answer task, or after `timeout` s."""
        body = {"message": message, "include_context": include_context}
        sent: Record = self.client._call(lambda: self.client._once(
            "POST", f"/v1/chat/sessions/{self.id}/messages", json=body), idempotent=False).json()
        return ChatReply(self, sent["message_id"], sent["task_id"], time.monotonic() + timeout)

    def get(self) -> Record:
        """The session with its history and stats."""
        session: Record = self.client._call(lambda: self.client._once("GET", f"/v1/chat/sessions/{self.id}")).json()
        return session

    def close(self, reason: str = "closed by the client") -> Record:
        """Close the session (cancels an answer in flight); the closed session with its stats."""
        return self.client._settled(f"/v1/chat/sessions/{self.id}/close", {"close_reason": reason}, self.get)
