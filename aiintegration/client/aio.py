"""`AsyncClient`: `Client`'s API awaited (asyncio or trio, through httpx and anyio); the
logic they share lives in protocol.py and sse.py, so this file is only the I/O."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from functools import partial
from typing import Any, TypeVar

import anyio
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
from aiintegration.client.sync import NOT_SENT, TRANSPORT
from aiintegration.errors import AIIntegrationError, ServiceUnavailable, WaitTimedOut

T = TypeVar("T")


async def _yes() -> bool:
    return True


class AsyncClient:
    """The aiintegration REST API, awaited. Same methods, options and errors as `Client`."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retry: RetryPolicy | None = None,
                 poll_interval: float = 0.5, headers: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self._timeout = timeout
        self._retrying = stamina.AsyncRetryingCaller(**self.retry_policy.stamina_kwargs())
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers={"Authorization": f"Bearer {token}", **(headers or {})})

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(self, task_type: str = "text_generation", *, request_content: dict[str, Any],
                     requested_by: str, priority: int = 5, metadata: dict[str, Any] | None = None,
                     options: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Record:
        """Create a task and return its record (a repeat of `idempotency_key` returns the first)."""
        body = submission(task_type, request_content, requested_by, priority, metadata, options)
        key = idempotency_key or str(uuid.uuid4())
        answer = await self._call(lambda: self._once("POST", "/v1/tasks", json=body, headers={"Idempotency-Key": key}))
        created: Record = answer.json()
        return created if answer.status_code == 200 else await self.get(created["id"])

    async def get(self, task_id: str) -> Record:
        """The task's record."""
        record: Record = (await self._call(lambda: self._once("GET", f"/v1/tasks/{task_id}"))).json()
        return record

    async def list(self, **filters: str | int) -> AsyncIterator[Record]:
        """Every task matching `filters`, newest first, page after page."""
        params: dict[str, str | int] = dict(filters)
        while True:
            page = (await self._call(partial(self._once, "GET", "/v1/tasks", params=params))).json()
            for item in page["items"]:
                yield item
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    async def cancel(self, task_id: str, reason: str) -> Record:
        """Cancel a queued or running task; its record. Conflict if it already finished."""
        return await self._settled(f"/v1/tasks/{task_id}/cancel", {"cancellation_reason": reason},
                                   lambda: self.get(task_id))

    async def retry(self, task_id: str, reason: str, delay: float | None = None) -> Record:
        """Run a dead-lettered or timed-out task again under its id (after `delay` seconds)."""
        return await self._settled(f"/v1/tasks/{task_id}/retry", {"retry_reason": reason, "delay": delay},
                                   lambda: self.get(task_id))

    async def wait(self, task_id: str, *, timeout: float = 300.0) -> Record:
        """The task's record once it succeeded; raises what it failed with (see `Client.wait`)."""
        deadline = time.monotonic() + timeout
        last: Event | None = None
        try:
            async with aclosing(self._follow(f"/v1/tasks/{task_id}/events", ends=TASK_ENDS, deadline=deadline,
                                             what=f"task {task_id}", done=_yes)) as feed:
                async for item in feed:
                    last = item if isinstance(item, dict) else last
        except ServiceUnavailable:
            pass  # the feed is failing: the record has the answer too
        while True:
            record = await self.get(task_id)
            if record["status"] in FINISHED:
                return outcome(record, last["data"] if last else None)
            if time.monotonic() >= deadline:
                raise WaitTimedOut(f"task {task_id} is still {record['status']} after {timeout:g} s",
                                   details={"task_id": task_id, "status": record["status"]})
            await anyio.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    async def events(self, task_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        """The task's events to its terminal one, resuming by itself after a dropped connection."""
        async with aclosing(self._follow(f"/v1/tasks/{task_id}/events", ends=TASK_ENDS, last_id=last_event_id,
                                         done=lambda: self._finished(task_id))) as feed:
            async for item in feed:
                if isinstance(item, dict):
                    yield item

    async def chat(self, *, user_id: str, item_id: str, initial_context: dict[str, Any] | str) -> AsyncChatSession:
        """Start a chat session about one item; the context becomes its system prompt."""
        body = {"user_id": user_id, "item_id": item_id, "initial_context": initial_context}
        session: Record = (await self._call(lambda: self._once("POST", "/v1/chat/sessions", json=body),
                                            idempotent=False)).json()
        return AsyncChatSession(self, session)

    async def _finished(self, task_id: str) -> bool:
        return (await self.get(task_id))["status"] in FINISHED

    async def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = await self._http.request(method, path, **kwargs)
        except NOT_SENT as exc:
            raise unreachable(self.base_url + path, exc, sent=False) from exc
        except TRANSPORT as exc:
            raise unreachable(self.base_url + path, exc, sent=True) from exc
        if answer.is_error:
            raise error_from_answer(answer.status_code, answer.content, answer.headers.get("Retry-After"))
        return answer

    async def _call(self, once: Callable[[], Awaitable[T]], *, idempotent: bool = True) -> T:
        return await self._retrying(retry_on(idempotent=idempotent), once)

    async def _settled(self, path: str, body: dict[str, Any], current: Callable[[], Awaitable[Record]]) -> Record:
        settle = Settle()

        async def once() -> Record | None:
            try:
                record: Record = (await self._once("POST", path, json=body)).json()
                return record
            except AIIntegrationError as exc:
                if settle.absorbs(exc):
                    return None
                settle.failed(exc)
                raise

        record = await self._call(once)
        return record if record is not None else await current()

    async def _open(self, path: str, cursor: Cursor) -> httpx.Response:
        headers = {"Last-Event-ID": cursor.last_id} if cursor.last_id else {}
        timeout = httpx.Timeout(self._timeout, read=cursor.read_timeout())

        async def once() -> httpx.Response:
            request = self._http.build_request("GET", path, headers=headers, timeout=timeout)
            try:
                answer = await self._http.send(request, stream=True)
            except NOT_SENT as exc:
                raise unreachable(self.base_url + path, exc, sent=False) from exc
            except TRANSPORT as exc:
                raise unreachable(self.base_url + path, exc, sent=True) from exc
            if answer.is_error:
                await answer.aread()
                await answer.aclose()
                raise error_from_answer(answer.status_code, answer.content, answer.headers.get("Retry-After"))
            return answer

        return await self._call(once)

    async def _follow(self, path: str, *, ends: frozenset[str], last_id: str | None = None,
                      deadline: float | None = None, what: str = "the event feed",
                      done: Callable[[], Awaitable[bool]] | None = None) -> AsyncGenerator[Event | str, None]:
        """See `Client._follow`."""
        cursor = Cursor(last_id, ends=ends, max_stalls=self.retry_policy.attempts, deadline=deadline, what=what)
        while not cursor.ended:
            answer, decoder, cause, stale = await self._open(path, cursor), Decoder(), None, False
            try:
                async for line in answer.aiter_lines():
                    item = decoder.feed(line)
                    if isinstance(item, str) or (item is not None and cursor.accept(item)):
                        yield item
                        if cursor.ended or (stale := cursor.stale()):
                            break
            except TRANSPORT as exc:
                cause = exc
            finally:
                await answer.aclose()
            if cursor.ended or stale:
                continue
            if cause is None and cursor.quiet and done is not None and await done():
                return
            await anyio.sleep(cursor.disconnected(cause, decoder.retry_ms))


class AsyncChatReply(AnswerView, AsyncIterator[str]):
    """The answer to one chat message: `async for` its deltas; then `text` and `completed`."""

    def __init__(self, session: AsyncChatSession, message_id: str, task_id: str, deadline: float) -> None:
        self.answer = Answer(message_id, task_id)
        self._deltas = self._stream(session, deadline)

    async def __anext__(self) -> str:
        return await self._deltas.__anext__()

    async def _stream(self, session: AsyncChatSession, deadline: float) -> AsyncGenerator[str, None]:
        client, answer = session.client, self.answer
        feed = client._follow(f"/v1/chat/sessions/{session.id}/events", ends=SESSION_ENDS,
                              last_id=session.last_event_id, deadline=deadline,
                              what=f"the answer to message {answer.message_id}")
        async with aclosing(feed):
            async for item in feed:
                if isinstance(item, str):  # a heartbeat: is the task still alive?
                    if error := answer.failed(await client.get(answer.task_id)):
                        raise error
                    continue
                if (delta := answer.take(item)) is not None:
                    yield delta
                elif answer.completed is not None:
                    session.last_event_id = answer.last_event_id
                    return


class AsyncChatSession:
    """An open chat session: `await send(...)`, then `async for` the answer; `await close()`."""

    def __init__(self, client: AsyncClient, session: Record) -> None:
        self.client = client
        self.id: str = session["id"]
        self.record = session
        self.last_event_id: str | None = None

    async def send(self, message: str, *, include_context: dict[str, Any] | str | None = None,
                   timeout: float = 300.0) -> AsyncChatReply:
        """Send `message` now; the reply iterates the answer's text deltas until it completed."""
        body = {"message": message, "include_context": include_context}
        sent: Record = (await self.client._call(lambda: self.client._once(
            "POST", f"/v1/chat/sessions/{self.id}/messages", json=body), idempotent=False)).json()
        return AsyncChatReply(self, sent["message_id"], sent["task_id"], time.monotonic() + timeout)

    async def get(self) -> Record:
        """The session with its history and stats."""
        session: Record = (await self.client._call(
            lambda: self.client._once("GET", f"/v1/chat/sessions/{self.id}"))).json()
        return session

    async def close(self, reason: str = "closed by the client") -> Record:
        """Close the session (cancels an answer in flight); the closed session with its stats."""
        return await self.client._settled(f"/v1/chat/sessions/{self.id}/close", {"close_reason": reason}, self.get)
