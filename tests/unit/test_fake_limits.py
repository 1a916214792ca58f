"""The fake provider's account limiter and header formats, driven with plain numbers (no server)."""

from __future__ import annotations

import pytest

from tests.fake_limits import (
    AccountLimiter,
    AccountLimits,
    anthropic_headers,
    estimate_input_tokens,
    go_duration,
    openai_headers,
    reserved_output_tokens,
    retry_after,
    rfc3339,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (0.0004, "1ms"), (0.12, "120ms"), (1, "1s"), (1.5, "1.5s"),
                                          (59.9986, "59.999s"), (59.9994, "1m0s"), (360, "6m0s"), (90.25, "1m30.25s"),
                                          (3723, "1h2m3s")])
def test_resets_read_like_openai_durations(seconds, text):
    assert go_duration(seconds) == text


def test_anthropic_resets_are_rfc3339_utc_rounded_up_and_retry_after_is_whole_seconds():
    assert rfc3339(1_700_000_000.2) == "2023-11-14T22:13:21Z"
    assert [retry_after(s) for s in (0.001, 1.0, 1.2, 59.5)] == ["1", "1", "2", "60"]


def test_the_request_limit_refuses_the_extra_request_until_the_oldest_leaves_the_window():
    clock, limits = Clock(), AccountLimits(rpm=2, window_s=10)
    limiter = AccountLimiter(clock)
    assert limiter.admit(limits, 1, 1).admitted
    clock.now += 4
    assert limiter.admit(limits, 1, 1).admitted
    refused = limiter.admit(limits, 1, 1)
    assert not refused.admitted and refused.reason == "requests" and refused.retry_after_s == pytest.approx(6)
    assert refused.budgets["requests"].remaining == 0 and limiter.rejected == 1
    clock.now += 6  # the first request leaves the window
    assert limiter.admit(limits, 1, 1).admitted
    assert limiter.max_in_window(10) == 2


def test_tokens_reserve_max_tokens_until_settled_with_the_real_output():
    clock, limits = Clock(), AccountLimits(tpm=120, window_s=60)
    limiter = AccountLimiter(clock)
    first = limiter.admit(limits, 10, 80)
    assert first.budgets["tokens"].remaining == 30
    assert not limiter.admit(limits, 10, 80).admitted  # 90 reserved + 90 wanted
    limiter.settle(first.ticket, 6)  # the answer was 6 tokens long
    second = limiter.admit(limits, 10, 80)
    assert second.admitted and second.budgets["tokens"].remaining == 120 - 16 - 90


def test_a_request_larger_than_the_whole_limit_is_refused_as_too_large():
    decision = AccountLimiter(Clock()).admit(AccountLimits(tpm=100, window_s=2), 20, 500)
    assert not decision.admitted and decision.too_large and decision.reason == "tokens"
    assert decision.retry_after_s == 2


def test_input_and_output_limits_default_to_the_token_limit_and_count_apart():
    limiter = AccountLimiter(Clock())
    budgets = limiter.admit(AccountLimits(rpm=10, tpm=1000, output_tpm=100, window_s=60), 30, 50).budgets
    assert {name: (b.limit, b.remaining) for name, b in budgets.items()} == {
        "requests": (10, 9), "tokens": (1000, 920), "input_tokens": (1000, 970), "output_tokens": (100, 50)}
    assert budgets["requests"].reset_s == pytest.approx(60)


def test_the_headers_name_each_configured_dimension_in_each_providers_words():
    budgets = AccountLimiter(Clock()).admit(AccountLimits(rpm=10, tpm=1000, window_s=6), 3, 7).budgets
    assert openai_headers(budgets) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9", "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "990", "x-ratelimit-reset-tokens": "6s"}
    anthropic = anthropic_headers(budgets, 1_700_000_000.0)
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "9"
    assert anthropic["anthropic-ratelimit-input-tokens-remaining"] == "997"
    assert anthropic["anthropic-ratelimit-output-tokens-reset"] == "2023-11-14T22:13:26Z"
    assert len(anthropic) == 12
    assert openai_headers(AccountLimiter(Clock()).admit(AccountLimits(rpm=1), 1, 1).budgets) == {
        "x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m0s"}


def test_input_is_estimated_from_characters_and_output_from_max_tokens():
    body = {"system": "abcd", "messages": [{"role": "user", "content": "12345678"},
                                           {"role": "user", "content": [{"type": "text", "text": "xy"}]}]}
    assert estimate_input_tokens(body) == 4  # 14 characters / 4, rounded up
    assert reserved_output_tokens({"max_tokens": 50}, 6) == 50
    assert reserved_output_tokens({"max_completion_tokens": 70, "max_tokens": 50}, 6) == 70
    assert reserved_output_tokens({}, 6) == 6
