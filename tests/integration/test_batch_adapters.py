"""The adapters' batch interface against the fake provider through the real SDKs: items
answered, refused, overloaded and expired become generations, our error tree with the
provider's message, and unfinished items; a batch created before a crash is found again —
OpenAI's by our id in its metadata, Anthropic's (no metadata) by time and size, never
someone else's."""

from __future__ import annotations

import time

import anthropic
import pytest

from aiintegration import errors
from aiintegration.providers import build_provider
from aiintegration.providers.base import BatchRequest, GenerationRequest
from tests.fake_provider import BatchBehaviour, FakeProvider

OPENAI_KEY = "sk-LEAKCHECK-adapter-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-LEAKCHECK-adapter-0123456789"


@pytest.fixture()
def fake():
    with FakeProvider(seed=19) as server:
        yield server


def adapters(fake):
    gpt, claude = fake.configs(openai_key=OPENAI_KEY, anthropic_key=ANTHROPIC_KEY)
    return build_provider(gpt), build_provider(claude)


def requests(*ids):
    return [BatchRequest(i, GenerationRequest("text_generation", {"prompt": f"about {i}"}, timeout_s=5)) for i in ids]


def ended(api, batch_id, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not (found := api.batch_get(batch_id)).ended:
        assert time.monotonic() < end, found
        time.sleep(0.05)
    return found


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_batch_items_become_generations_errors_of_our_tree_and_unfinished_items(fake, which):
    api = dict(zip(("openai", "anthropic"), adapters(fake), strict=True))[which]
    fake.batch = BatchBehaviour(delay_s=0.2, expire_after=4, fail={"b": (400, "max_tokens is too large"),
                                                                   "c": (529 if which == "anthropic" else 503,
                                                                         "overloaded")})
    batch = api.batch_create("ref-1", requests("a", "b", "c", "d", "e"), api.batch_upload("ref-1", requests(
        "a", "b", "c", "d", "e")))
    outcomes = {o.custom_id: o for o in api.batch_results(ended(api, batch.id))}
    assert outcomes["a"].generation.text == "word0 word1 word2 word3 word4 word5"
    assert outcomes["a"].generation.usage.output_tokens == 6
    assert isinstance(outcomes["b"].error, errors.InvalidRequest) and outcomes["b"].error.message == \
        "max_tokens is too large"
    assert isinstance(outcomes["c"].error, errors.ProviderUnavailable) and outcomes["c"].error.retryable
    assert outcomes["e"].unfinished == "expired" and outcomes["e"].generation is None
    assert {o.error.provider for o in outcomes.values() if o.error} == {which}


def test_an_openai_batch_is_found_again_by_our_id_in_its_metadata(fake):
    gpt, _ = adapters(fake)
    since = time.time()
    made = gpt.batch_create("ours", requests("x"), gpt.batch_upload("ours", requests("x")))
    gpt.batch_create("another", requests("y"), gpt.batch_upload("another", requests("y")))
    assert gpt.batch_find("ours", since=since, total=1, known=set()).id == made.id
    assert gpt.batch_find("never-sent", since=since, total=1, known=set()) is None
    ended(gpt, made.id)
    assert gpt.batch_cancel(made.id).status == "completed"  # too late to cancel: it says where it is


def test_an_anthropic_batch_is_found_again_by_time_and_size_and_never_taken_from_someone_else(fake):
    _, claude = adapters(fake)
    sdk = anthropic.Anthropic(base_url=fake.base_url.removesuffix("/v1"), api_key=ANTHROPIC_KEY, max_retries=0)
    params = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    old = sdk.messages.batches.create(requests=[{"custom_id": c, "params": params} for c in ("o1", "o2")])
    since = time.time() + 0.001
    time.sleep(0.01)
    foreign = sdk.messages.batches.create(requests=[{"custom_id": f"f{i}", "params": params} for i in range(3)])
    ours = claude.batch_create("ours", requests("p", "q"), None)
    assert claude.batch_find("ours", since=since, total=2, known={old.id}).id == ours.id
    assert claude.batch_find("ours", since=since, total=2, known={old.id, ours.id}) is None
    # A stranger's batch of the very same size and time would be taken for ours: then none of our
    # tasks is in its results, they go back to the lane, and ours was never billed. The lane
    # keeps one unresolved submission per provider so that its own batches are never confused.
    assert claude.batch_find("ours", since=since, total=3, known={old.id}).id == foreign.id


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_a_batch_item_counts_cached_prompt_tokens_as_a_realtime_answer_does(fake, which):
    api = dict(zip(("openai", "anthropic"), adapters(fake), strict=True))[which]
    fake.default.cached_tokens = 1000
    realtime = api.generate(requests("r")[0].request)
    batch = api.batch_create("ref-c", requests("a"), api.batch_upload("ref-c", requests("a")))
    (outcome,) = api.batch_results(ended(api, batch.id))
    assert outcome.generation.usage == realtime.usage
    assert outcome.generation.usage.cached_input_tokens == 1000


@pytest.mark.parametrize(("which", "stop"), [("openai", "content_filter"), ("anthropic", "refusal")])
def test_a_refused_batch_item_is_content_rejected(fake, which, stop):
    api = dict(zip(("openai", "anthropic"), adapters(fake), strict=True))[which]
    fake.default.stop = stop
    batch = api.batch_create("ref-r", requests("a"), api.batch_upload("ref-r", requests("a")))
    (outcome,) = api.batch_results(ended(api, batch.id))
    assert isinstance(outcome.error, errors.ContentRejected) and outcome.generation is None
