"""The real anthropic SDK against the fake provider server."""

from __future__ import annotations

import pytest

from aiintegration import errors
from aiintegration.domain.providers import ProviderConfig
from aiintegration.providers import build_provider
from aiintegration.providers.base import GenerationRequest
from tests.fake_provider import FakeProvider, Fault
from tests.support.calls import MODES, generate, stream

mode = pytest.mark.parametrize("mode", MODES)

KEY = "sk-ant-test-LEAKCHECK-1234567890"


@pytest.fixture()
def claude():
    with FakeProvider() as server:
        base = server.base_url.removesuffix("/v1")  # the SDK appends /v1/messages itself
        yield server, build_provider(ProviderConfig("anthropic", "anthropic", api_key=KEY, base_url=base, timeout_s=5))


def chat():
    return GenerationRequest("chat_completion", {"messages": [{"role": "system", "content": "brief"},
                                                              {"role": "user", "content": "hi there"}]}, timeout_s=5)


@mode
def test_messages_answer_in_our_result_shape_with_the_system_prompt_apart(claude, mode):
    server, provider = claude
    result = generate(provider, chat(), mode).to_result()
    assert result["text"].startswith("word0")
    assert result["usage"] == {"input_tokens": 2, "output_tokens": 6, "cached_input_tokens": 0}
    body = server.requests[-1]["body"]
    assert body["system"] == "brief" and body["messages"] == [{"role": "user", "content": "hi there"}]
    headers = server.requests[-1]["headers"]  # anthropic 2.x sends the key as a bearer token
    assert headers.get("x-api-key") == KEY or headers.get("authorization") == f"Bearer {KEY}"


@mode
def test_streaming_yields_deltas_then_the_final_message(claude, mode):
    *deltas, final = list(stream(claude[1], chat(), lambda: False, mode))
    assert "".join(deltas) == final.text and final.usage.output_tokens == 6


@pytest.mark.parametrize("fault,error", [(Fault(status=529, message="Overloaded"), errors.ProviderUnavailable),
                                         (Fault(status=429, retry_after=3), errors.RateLimited),
                                         (Fault(status=400, message="messages: roles must alternate"),
                                          errors.InvalidRequest),
                                         (Fault(status=401), errors.AuthenticationFailed),
                                         (Fault(status=401, message=f"key {KEY} is not valid"),  # echoed back
                                          errors.AuthenticationFailed)])
@mode
def test_faults_map_onto_the_error_tree_without_the_key(claude, fault, error, mode):
    claude[0].script(fault)
    with pytest.raises(error) as caught:
        generate(claude[1], chat(), mode)
    assert KEY not in str(caught.value.to_dict())


@mode
def test_images_are_an_unsupported_capability_that_the_router_skips(claude, mode):
    provider = claude[1]
    assert "image_generation" not in provider.capabilities
    with pytest.raises(errors.UnsupportedCapability):
        generate(provider, GenerationRequest("image_generation", {"prompt": "x"}, timeout_s=5), mode)


@mode
def test_a_refusal_is_content_rejected_whether_answered_or_streamed(claude, mode):
    claude[0].default.stop = "refusal"
    with pytest.raises(errors.ContentRejected):
        generate(claude[1], chat(), mode)
    with pytest.raises(errors.ContentRejected):
        list(stream(claude[1], chat(), lambda: False, mode))
