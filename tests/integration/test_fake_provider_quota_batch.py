"""The fake provider's account rate limits and batch APIs, through the real openai and
anthropic SDKs: what the provider-quota and batch-lane issues will test against."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletion

from aiintegration import errors
from aiintegration.providers import build_provider
from aiintegration.providers.base import GenerationRequest, ProviderConfig
from tests.fake_provider import AccountLimits, BatchBehaviour, BatchLimits, Behaviour, FakeProvider, Fault

OPENAI_KEY = "sk-LEAKCHECK-test-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-LEAKCHECK-test-0123456789"
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture()
def fake():
    with FakeProvider() as server:
        yield server


def gpt(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=OPENAI_KEY, max_retries=0, timeout=5)


def claude(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url.removesuffix("/v1"), api_key=ANTHROPIC_KEY, max_retries=0,
                               timeout=5)


def poll(read, done, timeout_s: float = 5.0):
    """`read()` until `done(value)`, at most `timeout_s`; the statuses seen on the way."""
    deadline, seen = time.monotonic() + timeout_s, []
    while True:
        value = read()
        status = getattr(value, "status", None) or getattr(value, "processing_status", None)
        if not seen or seen[-1] != status:
            seen.append(status)
        if done(value):
            return value, seen
        assert time.monotonic() < deadline, f"still {status} after {timeout_s}s"
        time.sleep(0.02)


def jsonl(requests: dict[str, dict], url: str = "/v1/chat/completions") -> bytes:
    return "".join(json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}) + "\n"
                   for cid, body in requests.items()).encode()


def chat_body(text: str, max_tokens: int = 20) -> dict:
    return {"model": "gpt-fake", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


# -- account rate limits


def test_openai_answers_carry_rate_limit_headers_that_count_down(fake):
    fake.limits = AccountLimits(rpm=5, tpm=10_000, window_s=2.0)
    seen = []
    for _ in range(3):
        raw = gpt(fake).chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=20)
        seen.append(raw.headers)
        assert raw.parse().choices[0].message.content.startswith("word0")
    assert [h["x-ratelimit-limit-requests"] for h in seen] == ["5"] * 3
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["4", "3", "2"]
    tokens = [int(h["x-ratelimit-remaining-tokens"]) for h in seen]
    assert tokens[0] == 10_000 - 2 - 20 and tokens[0] > tokens[1] > tokens[2]  # "hi there": 8 chars = 2 tokens
    for h in seen:
        assert h["x-ratelimit-limit-tokens"] == "10000"
        assert GO_DURATION.match(h["x-ratelimit-reset-requests"]) and GO_DURATION.match(h["x-ratelimit-reset-tokens"])
    fake.script(Fault(status=503))  # an admitted request that fails still counts, and says so
    with pytest.raises(openai.InternalServerError) as caught:
        gpt(fake).chat.completions.create(model="m", messages=HI)
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "1"


def test_anthropic_answers_carry_the_anthropic_ratelimit_headers(fake):
    fake.limits = AccountLimits(rpm=5, tpm=10_000, output_tpm=1_000, window_s=2.0)
    raw = claude(fake).messages.with_raw_response.create(model="c", max_tokens=50, messages=HI)
    again = claude(fake).messages.with_raw_response.create(model="c", max_tokens=50, messages=HI)
    h = raw.headers
    assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == ("5", "4")
    assert again.headers["anthropic-ratelimit-requests-remaining"] == "3"
    assert (h["anthropic-ratelimit-tokens-limit"], h["anthropic-ratelimit-tokens-remaining"]) == ("10000", "9948")
    assert (h["anthropic-ratelimit-input-tokens-limit"], h["anthropic-ratelimit-input-tokens-remaining"]) == \
        ("10000", "9998")
    assert (h["anthropic-ratelimit-output-tokens-limit"], h["anthropic-ratelimit-output-tokens-remaining"]) == \
        ("1000", "950")
    now = datetime.now(UTC)
    for family in ("requests", "tokens", "input-tokens", "output-tokens"):
        reset = datetime.fromisoformat(h[f"anthropic-ratelimit-{family}-reset"])
        assert 0 <= (reset - now).total_seconds() <= 3.5


def test_over_the_limit_answers_429_with_retry_after_and_the_window_refills(fake):
    fake.limits = AccountLimits(rpm=2, tpm=100_000, window_s=1.0)
    client = gpt(fake)
    for _ in range(2):
        client.chat.completions.create(model="m", messages=HI)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HI)
    response = caught.value.response
    assert response.headers["retry-after"] == "1" and response.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.body["code"] == "rate_limit_exceeded" and caught.value.body["type"] == "requests"
    assert fake.limiter.rejected == 1
    time.sleep(float(response.headers["retry-after"]))
    assert client.chat.completions.create(model="m", messages=HI).choices
    assert fake.limiter.rejected == 1 and len(fake.limiter.admitted_at) == 3


def test_an_anthropic_429_carries_retry_after_and_maps_onto_rate_limited(fake):
    fake.limits = AccountLimits(rpm=1, window_s=1.0)
    adapter = build_provider(ProviderConfig("anthropic", "anthropic", api_key=ANTHROPIC_KEY,
                                            base_url=fake.base_url.removesuffix("/v1"), timeout_s=5))
    request = GenerationRequest("chat_completion", {"messages": HI}, timeout_s=5)
    adapter.generate(request)
    with pytest.raises(errors.RateLimited) as caught:
        adapter.generate(request)
    assert caught.value.retry_after == 1.0 and ANTHROPIC_KEY not in str(caught.value.to_dict())
    assert fake.requests[-1]["path"] == "/v1/messages" and fake.limiter.rejected == 1


def test_tokens_reserve_max_tokens_and_a_request_larger_than_the_limit_never_fits(fake):
    fake.limits = AccountLimits(tpm=165, window_s=2.0)
    client = gpt(fake)
    client.chat.completions.create(model="m", messages=HI, max_tokens=150)  # 2 + 150 reserved, then 2 + 6 kept
    client.chat.completions.create(model="m", messages=HI, max_tokens=150)  # 8 + 152: fits because the first settled
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HI, max_tokens=150)
    assert caught.value.body["type"] == "tokens" and "Rate limit reached" in caught.value.body["message"]
    with pytest.raises(openai.RateLimitError) as too_large:
        client.chat.completions.create(model="m", messages=HI, max_tokens=500)
    assert "Request too large" in too_large.value.body["message"]


def test_clients_of_both_providers_together_stay_under_the_account_limit(fake):
    fake.limits = AccountLimits(rpm=6, window_s=1.0)
    stop_at = time.monotonic() + 2.5

    def hammer(call) -> None:
        while time.monotonic() < stop_at:
            try:
                call()
            except (openai.RateLimitError, anthropic.RateLimitError) as exc:
                time.sleep(min(float(exc.response.headers["retry-after"]), 0.3))

    calls = [lambda: gpt(fake).chat.completions.create(model="m", messages=HI),
             lambda: claude(fake).messages.create(model="c", max_tokens=10, messages=HI)] * 2
    threads = [threading.Thread(target=hammer, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert fake.limiter.rejected > 0 and len(fake.limiter.admitted_at) >= 12
    assert fake.limiter.max_in_window(1.0) <= 6


def test_cached_tokens_appear_in_both_providers_usage(fake):
    client = gpt(fake)
    plain = client.chat.completions.create(model="m", messages=HI)
    assert plain.usage.prompt_tokens_details.cached_tokens == 0
    fake.default = Behaviour(cached_tokens=1024, cache_creation_tokens=16)
    usage = client.chat.completions.create(model="m", messages=HI).usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens) == (1026, 1024, 6)
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1024
    message = claude(fake).messages.create(model="c", max_tokens=10, messages=HI)
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens, message.usage.output_tokens) == (2, 1024, 16, 6)
    with claude(fake).messages.stream(model="c", max_tokens=10, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 1024 and final.usage.output_tokens == 6


# -- OpenAI batches


def test_an_openai_batch_round_trip_through_the_sdk_with_a_400_and_a_500_item(fake):
    fake.batch = BatchBehaviour(delay_s=0.4, fail={"t-2": 400, "t-3": (500, "the model is overloaded")})
    client = gpt(fake)
    requests = {f"t-{i}": chat_body(f"question number {i}") for i in range(1, 6)}
    uploaded = client.files.create(file=("tasks.jsonl", jsonl(requests)), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, client.files.retrieve(uploaded.id).filename) == \
        ("batch", len(jsonl(requests)), "tasks.jsonl")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h", metadata={"lane": "batch"})
    assert created.status == "validating" and created.metadata == {"lane": "batch"}
    batch, seen = poll(lambda: client.batches.retrieve(created.id), lambda b: b.status == "completed")
    timeline = ["validating", "in_progress", "finalizing", "completed"]
    assert "in_progress" in seen and seen == sorted(seen, key=timeline.index)  # polls may miss a short phase
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 3, "failed": 2}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.usage.output_tokens == 18

    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    failed = {line["custom_id"]: line for line in
              map(json.loads, client.files.content(batch.error_file_id).text.splitlines())}
    assert sorted(line["custom_id"] for line in output) == ["t-1", "t-4", "t-5"]
    realtime = client.chat.completions.create(**requests["t-1"])
    answer = output[0]["response"]
    assert answer["status_code"] == 200 and output[0]["error"] is None and output[0]["id"].startswith("batch_req_")
    assert ChatCompletion.model_validate(answer["body"]).choices == realtime.choices
    assert answer["body"]["usage"] == realtime.usage.model_dump(exclude_none=True)
    assert failed["t-2"]["response"]["status_code"] == 400 and failed["t-2"]["error"] is None
    assert failed["t-2"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert failed["t-3"]["response"]["body"]["error"]["message"] == "the model is overloaded"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert fake.batch_records[0].outcomes == {"t-1": "succeeded", "t-2": "errored", "t-3": "errored",
                                              "t-4": "succeeded", "t-5": "succeeded"}
    assert fake.batch_successes() == {"t-1": 1, "t-4": 1, "t-5": 1}


def test_an_openai_batch_that_expires_lists_its_unanswered_items_as_batch_expired(fake):
    fake.batch = BatchBehaviour(delay_s=0.2, expire_after=1)
    client = gpt(fake)
    uploaded = client.files.create(file=("t.jsonl", jsonl({c: chat_body(c) for c in ("a", "b", "c")})),
                                   purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    batch, _ = poll(lambda: client.batches.retrieve(created.id), lambda b: b.status == "expired")
    assert batch.expired_at and batch.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    assert [json.loads(x)["custom_id"] for x in client.files.content(batch.output_file_id).text.splitlines()] == ["a"]
    lines = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [(x["custom_id"], x["response"], x["error"]["code"]) for x in lines] == \
        [("b", None, "batch_expired"), ("c", None, "batch_expired")]
    assert fake.batch_records[0].outcomes == {"a": "succeeded", "b": "expired", "c": "expired"}


def test_an_openai_batch_cancelled_before_it_ran_is_cancelling_then_cancelled_with_no_output(fake):
    fake.batch = BatchBehaviour(delay_s=5.0)
    client = gpt(fake)
    uploaded = client.files.create(file=("t.jsonl", jsonl({"a": chat_body("a")})), purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    assert client.batches.cancel(created.id).status == "cancelling"
    batch, _ = poll(lambda: client.batches.retrieve(created.id), lambda b: b.status == "cancelled", timeout_s=1)
    assert batch.cancelled_at and batch.output_file_id is None and batch.error_file_id is None
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)
    assert fake.batch_successes() == {}


def test_openai_batch_input_over_the_real_limits_fails_validation_with_batch_errors(fake):
    client = gpt(fake)

    def failed_batch(content: bytes):
        uploaded = client.files.create(file=("t.jsonl", content), purpose="batch")
        created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        return poll(lambda: client.batches.retrieve(created.id), lambda b: b.status != "validating")[0]

    fake.batch = BatchBehaviour(delay_s=0.0)
    too_many = jsonl({f"t-{i}": {"model": "m", "messages": HI} for i in range(50_001)})  # the real 50,000 limit
    batch = failed_batch(too_many)
    assert batch.status == "failed" and batch.failed_at and batch.errors.data[0].code == "too_many_tasks"
    fake.batch_limits = BatchLimits(openai_max_bytes=1_000)  # stands for 200 MB
    batch = failed_batch(jsonl({f"t-{i}": chat_body("x" * 100) for i in range(10)}))
    assert batch.status == "failed" and batch.errors.data[0].code == "file_too_large"
    fake.batch_limits = BatchLimits()
    bad = jsonl({"a": chat_body("a")}) + jsonl({"a": chat_body("b")}) + jsonl({"c": chat_body("c")}, url="/v1/x")
    batch = failed_batch(bad + b"{not json\n")
    assert [(e.code, e.line) for e in batch.errors.data] == \
        [("duplicate_custom_id", 2), ("url_mismatch", 3), ("invalid_json_line", 4)]
    assert batch.output_file_id is None and batch.request_counts.total == 0


def test_openai_batches_list_newest_first_with_after_pagination(fake):
    client = gpt(fake)
    uploaded = client.files.create(file=("t.jsonl", jsonl({"a": chat_body("a")})), purpose="batch")
    ids = [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[:0:-1] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows `after` by itself


# -- Anthropic message batches


def test_an_anthropic_batch_round_trip_streams_succeeded_and_errored_results(fake):
    fake.batch = BatchBehaviour(delay_s=0.3, fail=lambda cid, params: 400 if cid == "task-2" else None,
                                fail_rate={})
    client = claude(fake)
    params = {"model": "claude-fake", "max_tokens": 20, "messages": [{"role": "user", "content": "tell me"}]}
    created = client.messages.batches.create(requests=[{"custom_id": f"task-{i}", "params": params}
                                                       for i in range(1, 4)])
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 3
    batch, seen = poll(lambda: client.messages.batches.retrieve(created.id),
                       lambda b: b.processing_status == "ended")
    assert seen == ["in_progress", "ended"] and batch.ended_at and batch.results_url.endswith(f"{created.id}/results")
    assert batch.request_counts.model_dump() == {"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0,
                                                 "expired": 0}
    results = {r.custom_id: r.result for r in client.messages.batches.results(created.id)}
    realtime = client.messages.create(**params)
    assert results["task-1"].type == "succeeded" and results["task-1"].message.content == realtime.content
    assert results["task-1"].message.usage.output_tokens == realtime.usage.output_tokens
    assert results["task-2"].type == "errored" and results["task-2"].error.error.type == "invalid_request_error"
    assert fake.batch_successes() == {"task-1": 1, "task-3": 1}


def test_an_anthropic_batch_can_expire_or_be_canceled(fake):
    client = claude(fake)
    params = {"model": "c", "max_tokens": 5, "messages": HI}
    fake.batch = BatchBehaviour(delay_s=0.1, expire_after=1)
    expiring = client.messages.batches.create(requests=[{"custom_id": c, "params": params} for c in "ab"])
    poll(lambda: client.messages.batches.retrieve(expiring.id), lambda b: b.processing_status == "ended")
    assert [(r.custom_id, r.result.type) for r in client.messages.batches.results(expiring.id)] == \
        [("a", "succeeded"), ("b", "expired")]

    fake.batch = BatchBehaviour(delay_s=5.0, cancel_delay_s=0.2)
    canceled = client.messages.batches.create(requests=[{"custom_id": c, "params": params} for c in "xy"])
    assert client.messages.batches.cancel(canceled.id).processing_status == "canceling"
    batch, _ = poll(lambda: client.messages.batches.retrieve(canceled.id), lambda b: b.processing_status == "ended")
    assert batch.cancel_initiated_at and batch.request_counts.canceled == 2
    assert {r.result.type for r in client.messages.batches.results(canceled.id)} == {"canceled"}
    assert [b.id for b in client.messages.batches.list(limit=1)] == [canceled.id, expiring.id]
    assert client.messages.batches.delete(canceled.id).type == "message_batch_deleted"
    assert [r.status for r in fake.batch_records] == ["ended", "ended"]


def test_anthropic_batches_over_the_real_limits_are_refused_with_the_real_error_shape(fake):
    client = claude(fake)
    request = {"custom_id": "x", "params": {"model": "c", "max_tokens": 1, "messages": HI}}
    with pytest.raises(anthropic.BadRequestError) as too_many:
        client.messages.batches.create(requests=[{**request, "custom_id": f"t{i}"} for i in range(100_001)])
    assert too_many.value.body["error"]["type"] == "invalid_request_error"
    fake.batch_limits = BatchLimits(anthropic_max_bytes=2_000)  # stands for 256 MB
    with pytest.raises(anthropic.APIStatusError) as too_large:
        client.messages.batches.create(requests=[{**request, "custom_id": f"t{i}"} for i in range(50)])
    assert too_large.value.status_code == 413 and too_large.value.body["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[request, request])  # duplicate custom_id
    assert fake.batch_records == []
