"""The built-in `local` provider: deterministic answers with no key and no network.

Same request → same text, same PNG. `latency_ms` (config `extra`, or AII_LOCAL_LATENCY_MS)
simulates a slow provider for benchmarks and crash tests. Workers call `agenerate`/`astream`,
whose waits are `asyncio.sleep` on the same event loop as the SDK adapters' requests (a
cancel stops them the same way); the blocking pair cuts its sleep short when the caller stops.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator

from aiintegration.providers.base import Generation, GenerationRequest, Provider, ShouldStop, Usage

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def tiny_png(seed: bytes, size: int = 8) -> bytes:
    """A valid size×size RGB PNG whose colour is derived from `seed`."""
    r, g, b = seed[0], seed[1], seed[2]
    row = b"\x00" + bytes((r, g, b)) * size
    raw = row * size

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class LocalProvider(Provider):
    kind = "local"
    default_models = {
        "text_generation": "local-echo-1",
        "chat_completion": "local-echo-1",
        "image_generation": "local-png-1",
    }

    @property
    def latency_s(self) -> float:
        return float(self.config.extra.get("latency_ms", 0)) / 1000.0

    def _digest(self, request: GenerationRequest) -> bytes:
        canonical = json.dumps([request.task_type, request.content], sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).digest()

    def _words(self, request: GenerationRequest) -> list[str]:
        digest = self._digest(request)
        count = min(request.max_tokens, 8 + digest[0] % 17)
        return [_WORDS[digest[i % len(digest)] % len(_WORDS)] for i in range(count)]

    def _usage(self, request: GenerationRequest, output_tokens: int) -> Usage:
        system, messages = request.system_and_messages()
        text = " ".join([system or ""] + [m["content"] for m in messages])
        return Usage(input_tokens=len(text.split()), output_tokens=output_tokens)

    def _wait(self, seconds: float, should_stop: ShouldStop) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not should_stop():
            time.sleep(min(left, 0.05))

    def _answer(self, request: GenerationRequest) -> Generation:
        model = self.model_for(request)
        if request.task_type == "image_generation":
            png = tiny_png(self._digest(request))
            return Generation(self.name, model, images=({"b64_png": base64.b64encode(png).decode()},))
        words = self._words(request)
        return Generation(self.name, model, text=" ".join(words), usage=self._usage(request, len(words)), finish_reason="stop")

    def generate(self, request: GenerationRequest) -> Generation:
        if self.latency_s:
            time.sleep(self.latency_s)
        return self._answer(request)

    async def agenerate(self, request: GenerationRequest) -> Generation:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return self._answer(request)

    def _pieces(self, request: GenerationRequest) -> tuple[list[str], float]:
        """The answer's deltas and the pause before each."""
        words = self._words(request)
        return [word if i == 0 else " " + word for i, word in enumerate(words)], self.latency_s / len(words)

    def stream(self, request: GenerationRequest, should_stop: ShouldStop) -> Iterator[str | Generation]:
        if request.task_type == "image_generation":
            yield self.generate(request)
            return
        pieces, pause = self._pieces(request)
        for piece in pieces:
            self._wait(pause, should_stop)
            if should_stop():
                return
            yield piece
        yield self._answer(request)

    async def astream(self, request: GenerationRequest, should_stop: ShouldStop) -> AsyncIterator[str | Generation]:
        if request.task_type == "image_generation":
            yield await self.agenerate(request)
            return
        pieces, pause = self._pieces(request)
        for piece in pieces:
            await asyncio.sleep(pause)
            if should_stop():
                return
            yield piece
        yield self._answer(request)

    def check(self) -> None:
        return None
