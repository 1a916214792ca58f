"""The real openai SDK against the fake provider server: results, streaming, and the
mapping of every fault onto our error tree (no API key in any error)."""

from __future__ import annotations

import time

import pytest

from aiintegration import errors
from aiintegration.domain.providers import ProviderConfig
from aiintegration.providers import build_provider
from aiintegration.providers.base import GenerationRequest
from tests.fake_provider import FakeProvider, Fault
from tests.support.calls import MODES, generate, stream

mode = pytest.mark.parametrize("mode", MODES)

KEY = "sk-test-LEAKCHECK-1234567890"


@pytest.fixture()
def fake():
    with FakeProvider() as server:
        yield server


def provider(fake, timeout_s=5.0):
    return build_provider(ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=timeout_s))


def text(timeout_s=5.0):
    return GenerationRequest("text_generation", {"prompt": "hello there", "system": "be kind"}, timeout_s=timeout_s)


@mode
def test_text_chat_and_image_come_back_in_our_result_shape(fake, mode):
    p = provider(fake)
    result = generate(p, text(), mode).to_result()
    assert result["text"] == "word0 word1 word2 word3 word4 word5" and result["usage"]["output_tokens"] == 6
    assert fake.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert fake.requests[-1]["body"]["messages"][0] == {"role": "system", "content": "be kind"}
    image = generate(p, GenerationRequest("image_generation", {"prompt": "a cat"}, timeout_s=5), mode).to_result()
    assert image["images"][0]["b64_png"]


@mode
def test_streaming_yields_deltas_then_the_final_generation(fake, mode):
    pieces = list(stream(provider(fake), text(), lambda: False, mode))
    *deltas, final = pieces
    assert "".join(deltas) == final.text and final.usage.output_tokens == 6 and final.finish_reason == "stop"


@mode
def test_a_stream_cut_midway_is_a_transient_failure_after_the_first_deltas(fake, mode):
    fake.script(Fault(drop_after=2))
    seen = []
    with pytest.raises(errors.ProviderUnavailable):
        for piece in stream(provider(fake), text(), lambda: False, mode):
            seen.append(piece)
    assert seen == ["word0", " word1"]


@pytest.mark.parametrize("fault", [Fault(error_after=2, message="overloaded, try later"), Fault(garbage_after=2)])
@mode
def test_an_error_event_or_a_malformed_chunk_midstream_is_a_transient_failure(fake, fault, mode):
    fake.script(fault)
    seen = []
    with pytest.raises(errors.ProviderUnavailable) as caught:
        for piece in stream(provider(fake), text(), lambda: False, mode):
            seen.append(piece)
    assert seen == ["word0", " word1"] and caught.value.retryable and KEY not in str(caught.value)


@mode
def test_streaming_sends_the_chat_completions_request_and_reads_model_and_usage(fake, mode):
    *_, final = stream(provider(fake), GenerationRequest("chat_completion", {"messages": [
        {"role": "system", "content": "ctx"}, {"role": "user", "content": "hi there"}], "max_tokens": 50},
        timeout_s=5, model="m-1"), lambda: False, mode)
    body = fake.requests[-1]["body"]
    assert fake.requests[-1]["path"].endswith("/chat/completions")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 50
    assert body["messages"] == [{"role": "system", "content": "ctx"}, {"role": "user", "content": "hi there"}]
    assert (final.model, final.usage.input_tokens, final.usage.output_tokens) == ("m-1", 3, 6)


@mode
def test_a_stop_request_ends_a_slow_stream_quickly(fake, mode):
    fake.default.chunk_delay_s = 0.3
    started = time.monotonic()
    pieces = list(stream(provider(fake), text(), lambda: time.monotonic() - started > 0.4, mode))
    assert time.monotonic() - started < 1.5 and all(isinstance(p, str) for p in pieces)


@pytest.mark.parametrize("fault,error,retryable", [
    (Fault(status=429, retry_after=2), errors.RateLimited, True),
    (Fault(status=500), errors.ProviderUnavailable, True),
    (Fault(status=503), errors.ProviderUnavailable, True),
    (Fault(drop=True), errors.ProviderUnavailable, True),
    (Fault(malformed=True), errors.ProviderUnavailable, True),
    (Fault(status=400, message="max_tokens is too large"), errors.InvalidRequest, False),
    (Fault(status=401, message="Incorrect API key provided"), errors.AuthenticationFailed, False),
    (Fault(status=401, message=f"key {KEY} is not valid here"), errors.AuthenticationFailed, False),  # echoed back
    (Fault(status=400, code="content_policy_violation", message="rejected"), errors.ContentRejected, False),
])
@mode
def test_each_fault_maps_onto_the_error_tree_without_the_key(fake, fault, error, retryable, mode):
    fake.script(fault)
    with pytest.raises(error) as caught:
        generate(provider(fake), text(), mode)
    assert caught.value.retryable is retryable and caught.value.provider == "openai"
    assert KEY not in str(caught.value) and KEY not in repr(caught.value.to_dict())
    if isinstance(caught.value, errors.RateLimited):
        assert caught.value.retry_after == 2.0
    if fault.status == 400 and fault.code is None:
        assert "max_tokens is too large" in caught.value.message


@pytest.mark.parametrize("fault,error", [
    (Fault(status=429, retry_after=2), errors.RateLimited),
    (Fault(status=503), errors.ProviderUnavailable),
    (Fault(status=400, message="max_tokens is too large"), errors.InvalidRequest),
    (Fault(status=401, message="Incorrect API key provided"), errors.AuthenticationFailed),
    (Fault(status=400, message=f"max_tokens is too large for {KEY}"), errors.InvalidRequest),  # echoed back
    (Fault(malformed=True), errors.ProviderUnavailable),
])
@mode
def test_a_streaming_request_maps_each_fault_the_same_way(fake, fault, error, mode):
    fake.script(fault)
    with pytest.raises(error) as caught:
        list(stream(provider(fake), text(), lambda: False, mode))
    assert caught.value.provider == "openai" and KEY not in str(caught.value)
    if isinstance(caught.value, errors.RateLimited):
        assert caught.value.retry_after == 2.0
    if fault.status == 400:
        assert "max_tokens is too large" in caught.value.message


@mode
def test_a_provider_that_hangs_past_the_timeout_is_a_provider_timeout(fake, mode):
    fake.script(Fault(status=200, delay_s=3))
    started = time.monotonic()
    with pytest.raises(errors.ProviderTimeout):
        generate(provider(fake), text(timeout_s=0.5), mode)
    assert time.monotonic() - started < 2.5


def test_concurrent_slow_calls_through_one_provider_and_its_breaker_overlap(fake, ctx):
    """pybreaker's call() would serialize these; our breaker only wraps the outcome."""
    from concurrent.futures import ThreadPoolExecutor


    fake.default.delay_s = 0.5
    p, breaker = provider(fake), ctx.breakers["concurrency-probe"]

    def one(_: int) -> None:
        assert breaker.allows()
        p.generate(text())
        breaker.success()

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"8 calls of 0.5 s took {elapsed:.2f}s: they were serialized"


@mode
def test_a_filtered_answer_is_content_rejected_whether_answered_or_streamed(fake, mode):
    fake.default.stop = "content_filter"
    with pytest.raises(errors.ContentRejected):
        generate(provider(fake), text(), mode)
    with pytest.raises(errors.ContentRejected):
        list(stream(provider(fake), text(), lambda: False, mode))
