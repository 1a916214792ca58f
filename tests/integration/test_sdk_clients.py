"""The async SDK clients workers call providers with, against the fake provider server:
when a call's request leaves (providers/sending.py: the moment its headers are written,
which the quota bucket counts from, not when the attempt's coroutine starts), for both SDKs;
and a replaced provider's client closed once no attempt can still be using it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from aiintegration.commands.routing import Router
from aiintegration.commands.runner import AttemptRunner
from aiintegration.domain.providers import ProviderConfig
from aiintegration.providers import build_provider
from aiintegration.providers.base import GenerationRequest, Provider
from aiintegration.providers.sending import stamping
from tests.fake_provider import FakeProvider
from tests.support import wait_for
from tests.support.calls import on_loop

HELD_S = 0.3


@pytest.fixture(params=["openai", "anthropic"])
def sdk(request):
    with FakeProvider() as server:
        base = server.base_url if request.param == "openai" else server.base_url.removesuffix("/v1")
        yield server, build_provider(ProviderConfig("p", request.param, api_key="sk-test", base_url=base,
                                                    timeout_s=5))


def ask() -> GenerationRequest:
    return GenerationRequest("chat_completion", {"messages": [{"role": "user", "content": "hi"}]}, timeout_s=5)


def held_back(provider: Provider, by_s: float) -> None:
    """Requests of this client wait `by_s` after our hook before they go (as behind a busy
    event loop or a full connection pool)."""
    client = provider.aclient._client  # type: ignore[attr-defined]  # the SDK's httpx client

    async def wait(_request):
        await asyncio.sleep(by_s)

    client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], wait]}


async def timed_calls(provider: Provider, n: int) -> list[tuple[float, float]]:
    """n concurrent calls, each in its own task: (when it started, when its request was sent)."""
    async def one(i: int) -> tuple[float, float]:
        await asyncio.sleep(i * HELD_S)  # they start apart, so each stamp is told from the others
        started = time.time()
        with stamping([started]) as sent:
            await provider.agenerate(ask())
        return started, sent[0]
    return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_the_send_time_is_when_the_headers_go_out_not_when_the_call_began(sdk):
    server, provider = sdk
    held_back(provider, HELD_S)
    calls = on_loop(timed_calls(provider, 3))
    arrivals = sorted(r["at"] for r in server.requests)
    for (started, sent), arrived in zip(calls, arrivals, strict=True):
        assert started + HELD_S <= sent <= arrived  # after the hold, before the server read it
        assert arrived - sent < HELD_S  # its own request, not a neighbour's


def test_outside_a_stamping_block_nothing_is_traced(sdk):
    server, provider = sdk
    holder = [0.0]
    with stamping(holder):
        pass
    on_loop(provider.agenerate(ask()))
    assert holder == [0.0] and len(server.requests) == 1


def test_a_replaced_providers_client_is_closed_once_no_attempt_can_still_use_it(ctx):
    with FakeProvider() as fake:
        runner = AttemptRunner(ctx.tasks, lease_s=30)
        router = Router(ctx.providers, on_retire=lambda provider: runner.retire(provider, after_s=0.5))
        config = ProviderConfig("closing", "openai", api_key="sk-test-LEAKCHECK-clients-0123456789",
                                base_url=fake.base_url, timeout_s=5)
        ctx.providers.put(config)
        old = router.provider("closing")
        asyncio.run_coroutine_threadsafe(old.agenerate(ask()), runner._event_loop()).result(timeout=10)
        client = old.aclient  # made on the runner's loop by that call
        ctx.providers.put(replace(config, timeout_s=6))
        router.invalidate()
        assert router.provider("closing") is not old
        assert not client.is_closed()  # an attempt that began before the change may still use it
        wait_for(client.is_closed, timeout_s=5, what="the replaced provider's client closed")
