"""The pure rules, with plain values: retry budgets, provider choice, chat history trimming,
resume points, the metrics protocol. No Redis, no SDK."""

from __future__ import annotations

import pytest

from aiintegration.domain.chat import merged_context, trimmed
from aiintegration.domain.events import resume_point
from aiintegration.domain.quotas import ask_again_after
from aiintegration.domain.records import TaskOptions, TaskRecord
from aiintegration.domain.routing import Candidate, choose_provider, usable
from aiintegration.domain.states import TaskStatus
from aiintegration.errors import NotFound, ProviderUnavailable, UnsupportedCapability, ValidationError
from aiintegration.store.metrics import bucket, counter, decode, fields_of, observation

ALL = frozenset({"text_generation", "chat_completion", "image_generation"})
TEXT = frozenset({"text_generation", "chat_completion"})


def record(**fields):
    base = {"id": "t", "task_type": "text_generation", "status": TaskStatus.RUNNING, "requested_by": "svc",
            "request_content": {"prompt": "p"}}
    return TaskRecord(**{**base, **fields})


@pytest.mark.parametrize("attempts,budget_from,max_retries,left", [
    (1, 0, 3, 3), (2, 0, 3, 2), (4, 0, 3, 0), (5, 4, 3, 3), (1, 0, 0, 0)])
def test_retries_left_counts_failed_attempts_since_the_last_manual_retry(attempts, budget_from, max_retries, left):
    r = record(attempts=attempts, budget_from=budget_from, options=TaskOptions(max_retries=max_retries))
    assert r.retries_left == left


def choose(task_type, order, blocked=None, pinned=None, disabled=()):
    candidates = {"openai": Candidate("openai", "openai" not in disabled, ALL),
                  "anthropic": Candidate("anthropic", "anthropic" not in disabled, TEXT),
                  "local": Candidate("local", "local" not in disabled, ALL)}
    return choose_provider(task_type, order=order, candidates=candidates,
                           blocked_for=lambda name: (blocked or {}).get(name, 0.0), pinned=pinned)


def test_the_first_provider_in_the_order_that_can_do_the_task_is_chosen():
    assert choose("text_generation", ["anthropic", "openai"]) == "anthropic"
    assert choose("image_generation", ["anthropic", "openai"]) == "openai"


def test_an_open_breaker_or_a_disabled_provider_moves_the_attempt_down_the_order():
    assert choose("text_generation", ["openai", "local"], blocked={"openai": 12.0}) == "local"
    assert choose("text_generation", ["openai", "local"], disabled=("openai",)) == "local"


def test_when_every_capable_provider_is_blocked_the_retry_waits_for_the_first_to_reopen():
    with pytest.raises(ProviderUnavailable) as caught:
        choose("text_generation", ["openai", "local"], blocked={"openai": 12.0, "local": 3.0})
    assert caught.value.retry_after == 3.0


def test_a_pinned_provider_is_used_as_pinned_or_says_why_not():
    assert choose("text_generation", ["local"], pinned="openai") == "openai"
    with pytest.raises(ProviderUnavailable) as caught:
        choose("text_generation", ["local"], pinned="openai", blocked={"openai": 7.5})
    assert caught.value.retry_after == 7.5 and caught.value.provider == "openai"
    with pytest.raises(UnsupportedCapability):
        choose("image_generation", ["local"], pinned="anthropic")
    with pytest.raises(NotFound):
        choose("text_generation", ["local"], pinned="nobody")


def test_no_capable_provider_is_a_permanent_error():
    with pytest.raises(UnsupportedCapability):
        choose("image_generation", ["anthropic"])


def turns(*lengths):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * n} for i, n in enumerate(lengths)]


def test_chat_history_keeps_the_latest_turns_that_fit_and_always_the_system_context():
    history = turns(100, 100, 100, 100)
    kept = trimmed("sys", history, budget_tokens=60)  # 240 characters, minus the system's 3
    assert kept[0] == {"role": "system", "content": "sys"}
    assert [len(m["content"]) for m in kept[1:]] == [100, 100]


def test_the_latest_turn_is_kept_even_when_it_alone_is_over_the_budget():
    kept = trimmed("sys", turns(50, 10_000), budget_tokens=10)
    assert [len(m["content"]) for m in kept[1:]] == [10_000]


def test_include_context_merges_objects_key_by_key_and_appends_text_otherwise():
    assert merged_context({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
    assert merged_context("about a mug", {"colour": "blue"}).startswith("about a mug\n\n{")


def test_a_feed_resumes_after_a_stream_id_and_refuses_anything_else():
    assert resume_point(None) == "0-0" and resume_point("1732467600000-3") == "1732467600000-3"
    for junk in ("nonsense", "12", "1-2-3", "-1-0"):
        with pytest.raises(ValidationError):
            resume_point(junk)


def test_the_metrics_layout_round_trips_counters_and_histograms():
    assert fields_of(counter("aii_tokens_total", 12, direction="input", provider="open;ai")) == [
        ("aii_tokens_total|direction=input,provider=open_ai", 12)]
    assert fields_of(observation("aii_provider_call_seconds", 0.25, provider="local")) == [
        ("aii_provider_call_seconds_bucket|provider=local|0.25", 1), ("aii_provider_call_seconds_sum|provider=local", 0.25)]
    # the bucket names earlier versions' Lua wrote (tostring of the bound), so histograms carry on
    assert [bucket(v) for v in (0, 0.05, 0.06, 1, 2.4, 3600, 3601)] == ["0.05", "0.05", "0.1", "1", "2.5", "3600",
                                                                      "+Inf"]
    # what the hash holds for such samples (a histogram's count is its buckets' sum; the count
    # field earlier versions kept is ignored)
    stored = {"aii_tokens_total|direction=input,provider=open_ai": "12",
              "aii_provider_call_seconds_bucket|provider=local|0.25": "1",
              "aii_provider_call_seconds_bucket|provider=local|+Inf": "2",
              "aii_provider_call_seconds_sum|provider=local": "90.25",
              "aii_provider_call_seconds_count|provider=local": "7"}
    metrics = decode(stored)
    assert metrics.counters == {"aii_tokens_total": [({"direction": "input", "provider": "open_ai"}, 12.0)]}
    (hist,) = metrics.histograms["aii_provider_call_seconds"]
    assert hist.labels == {"provider": "local"} and hist.sum == 90.25
    assert hist.buckets == [("0.25", 1.0), ("+Inf", 3.0)]  # cumulative


def test_where_an_unpinned_task_would_go_skips_disabled_and_incapable_providers():
    """The one preference rule behind budget pricing, the batch lane's provider and quota
    failover: enabled and capable, in order (breakers are the attempt's business)."""
    candidates = {"openai": Candidate("openai", False, ALL), "anthropic": Candidate("anthropic", True, TEXT),
                  "local": Candidate("local", True, ALL)}
    order = ["openai", "anthropic", "local"]
    assert list(usable("text_generation", order=order, candidates=candidates)) == ["anthropic", "local"]
    assert list(usable("image_generation", order=order, candidates=candidates)) == ["local"]


def test_a_throttled_task_far_back_asks_again_at_half_its_wait_and_one_near_the_front_at_its_turn():
    cap, ceiling = 30.0, 1950.0
    assert ask_again_after(0.0, cap_s=cap, ceiling_s=ceiling) == 0.05
    assert ask_again_after(12.5, cap_s=cap, ceiling_s=ceiling) == 12.5  # near the front: at its turn
    assert ask_again_after(45.0, cap_s=cap, ceiling_s=ceiling) == 30.0
    assert ask_again_after(600.0, cap_s=cap, ceiling_s=ceiling) == 300.0
    assert ask_again_after(10_000.0, cap_s=cap, ceiling_s=ceiling) == ceiling  # never past the visibility timeout
    # a task 5,000 s back asks ~9 times on its way to the front, not 167 times (every 30 s)
    wait, asks = 5000.0, 0
    while wait > 0:
        wait -= ask_again_after(wait, cap_s=cap, ceiling_s=ceiling)
        asks += 1
    assert asks <= 10
