"""A provider adapter's blocking pair (`generate`/`stream`) or its async pair (what workers
call, on their event loop) behind one signature, so adapter tests run against both. The
async calls run as in a worker: on one event loop of their own thread, for every call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from aiintegration.providers.base import Generation, GenerationRequest, Provider, ShouldStop

MODES = ["blocking", "async"]
T = TypeVar("T")
_loop = asyncio.new_event_loop()
threading.Thread(target=_loop.run_forever, name="calls-loop", daemon=True).start()


def on_loop(call: Coroutine[Any, Any, T]) -> T:
    """Run `call` on the shared loop (as a worker's calls run) and wait for its outcome."""
    return asyncio.run_coroutine_threadsafe(call, _loop).result()


def generate(provider: Provider, request: GenerationRequest, mode: str) -> Generation:
    if mode == "blocking":
        return provider.generate(request)
    return on_loop(provider.agenerate(request))


def stream(provider: Provider, request: GenerationRequest, should_stop: ShouldStop,
           mode: str) -> Iterator[str | Generation]:
    """The pieces in order; an error raised midway comes after the pieces before it."""
    if mode == "blocking":
        yield from provider.stream(request, should_stop)
        return
    pieces, error = on_loop(_collect(provider.astream(request, should_stop)))
    yield from pieces
    if error is not None:
        raise error


async def _collect(pieces: AsyncIterator[str | Generation]) -> tuple[list[str | Generation], Exception | None]:
    seen: list[str | Generation] = []
    try:
        async for piece in pieces:
            seen.append(piece)
    except Exception as exc:  # noqa: BLE001 - handed back to the test after the pieces
        return seen, exc
    return seen, None
