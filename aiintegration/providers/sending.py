"""When a provider call's request really leaves: the moment its HTTP request headers are
written to the connection, not when the coroutine that makes the call starts.

The two can be far apart: a call waits for the event loop (hundreds of concurrent attempts
share one), for a free connection of the SDK client's pool (1,000 per client) and for a TCP
connect. A provider counts a request against its rate limit when it arrives, so the quota
bucket (commands/quotas.py) must count it from then too, or it frees the slot too early and
admits a request the provider refuses with a 429.

The async SDK clients are built with `http_client_hooks()`; inside `stamping(holder)`,
`holder[0]` is set each time a request of that task sends its headers (httpcore's `trace`
request extension, documented at https://www.encode.io/httpcore/extensions/#trace).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

Trace = Callable[[str, Mapping[str, Any]], Awaitable[None]]

_holder: ContextVar[list[float] | None] = ContextVar("aii_request_sent_at", default=None)


@contextmanager
def stamping(holder: list[float]) -> Iterator[list[float]]:
    """While it lasts, the requests the current task sends write their send time to `holder[0]`."""
    token = _holder.set(holder)
    try:
        yield holder
    finally:
        _holder.reset(token)


def _trace(previous: Trace | None) -> Trace:
    async def trace(name: str, info: Mapping[str, Any]) -> None:
        # "http11.send_request_headers.started", "http2.send_request_headers.started"
        if name.endswith(".send_request_headers.started"):
            holder = _holder.get()
            if holder is not None:
                holder[0] = time.time()
        if previous is not None:
            await previous(name, info)
    return trace


async def _on_request(request: Any) -> None:  # an httpx2.Request: the SDKs' own httpx
    if _holder.get() is not None:
        request.extensions["trace"] = _trace(request.extensions.get("trace"))


def http_client_hooks() -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """`event_hooks` for an SDK's `DefaultAsyncHttpxClient` (its defaults kept otherwise)."""
    return {"request": [_on_request]}
