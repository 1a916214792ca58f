"""The batch lane's pure rules with plain values: choosing the lane, the providers with a batch
API, grouping and cutting batches, when a group is due, deadlines, and the batch price."""

from __future__ import annotations

import pytest

from aiintegration.config import Settings
from aiintegration.domain.batching import (
    PROVIDER_LIMITS,
    BatchLimits,
    batch_enabled,
    cut,
    group_name,
    is_due,
    lane_provider,
    limits_for,
    parse_policy,
    round_estimate_s,
    split_group,
    survives_another_round,
    wants_lane,
)
from aiintegration.domain.lane_batch import BatchStatus, LaneBatch
from aiintegration.domain.pricing import estimate_cost, parse_prices
from aiintegration.domain.providers import ProviderConfig, default_configs
from aiintegration.domain.submission import validate_submission
from aiintegration.errors import ValidationError

TEXT = frozenset({"text_generation", "chat_completion"})
ALL = TEXT | {"image_generation"}


def lane(batch=None, policy=None, **task):
    base = {"task_type": "text_generation", "priority": 5, "timeout_s": 300.0, "requested_by": "svc"}
    return wants_lane(batch, policy, **{**base, **task})


def test_the_tasks_own_batch_option_wins_over_the_policy():
    policy = parse_policy('{"max_priority": 2}')
    assert lane(True) and not lane(False, policy, priority=0)
    assert lane(None, policy, priority=2) and not lane(None, policy, priority=3)
    assert not lane(None, None, priority=0)  # no policy: only options.batch uses the lane


def test_images_and_chat_answers_never_wait_for_a_batch():
    assert not lane(True, task_type="image_generation")
    assert not lane(True, chat=True)
    assert lane(True, task_type="chat_completion")


def test_the_policy_can_ask_for_a_long_deadline_and_name_callers():
    policy = parse_policy('{"max_priority": 2, "min_timeout_s": 3600, "requested_by": ["nightly"]}')
    assert lane(None, policy, priority=1, timeout_s=3600, requested_by="nightly")
    assert not lane(None, policy, priority=1, timeout_s=600, requested_by="nightly")
    assert not lane(None, policy, priority=1, timeout_s=3600, requested_by="checkout")


@pytest.mark.parametrize("raw", ['{"min_timeout_s": 3}', '{"max_priority": 2, "colour": "red"}',
                                 '{"max_priority": 2, "task_types": ["image_generation"]}', "[1]"])
def test_a_policy_that_cannot_be_read_is_refused_at_start(raw):
    with pytest.raises(ValueError):
        parse_policy(raw)


def test_no_policy_is_the_default_and_off_turns_it_off():
    assert parse_policy("") is None and parse_policy("off") is None
    assert Settings.from_env({}).batch_policy is None
    assert Settings.from_env({"AII_BATCH_POLICY": '{"max_priority": 1}'}).batch_policy.max_priority == 1


def test_openai_and_anthropic_have_batch_apis_and_compatible_servers_only_when_configured():
    assert batch_enabled(ProviderConfig("openai", "openai")) and batch_enabled(ProviderConfig("c", "anthropic"))
    assert not batch_enabled(ProviderConfig("local", "local"))
    assert not batch_enabled(ProviderConfig("vllm", "openai_compatible"))
    assert batch_enabled(ProviderConfig("vllm", "openai_compatible", extra={"batch": True}))
    assert not batch_enabled(ProviderConfig("openai", "openai", enabled=False))
    configs = default_configs(("openai", "vllm"), {"AII_PROVIDER_OPENAI_BATCH": "0", "AII_PROVIDER_VLLM_BATCH": "1"})
    assert [batch_enabled(c) for c in configs] == [False, True]


def test_a_lane_task_waits_for_the_provider_it_would_get_in_realtime_if_that_one_batches():
    configs = {"openai": ProviderConfig("openai", "openai"), "local": ProviderConfig("local", "local"),
               "anthropic": ProviderConfig("anthropic", "anthropic")}
    caps = {"openai": ALL, "local": ALL, "anthropic": TEXT}

    def choose(order, pinned=None, task_type="text_generation"):
        return lane_provider(task_type, order=order, configs=configs, capabilities=caps, pinned=pinned)

    assert choose(["openai", "local"]) == "openai"
    assert choose(["local", "openai"]) is None  # it would run on local: no batch API, realtime
    assert choose(["local"], pinned="anthropic") == "anthropic"
    assert choose(["openai"], pinned="local") is None
    assert choose(["openai"], pinned="nobody") is None


def test_groups_are_provider_and_model_and_split_back():
    assert split_group(group_name("openai", "gpt-4o-mini")) == ("openai", "gpt-4o-mini")


def test_a_group_is_due_when_full_or_when_its_oldest_waited_long_enough():
    assert not is_due(waiting=0, oldest_waited_s=10_000, max_requests=10, max_wait_s=600)
    assert is_due(waiting=10, oldest_waited_s=0, max_requests=10, max_wait_s=600)
    assert not is_due(waiting=9, oldest_waited_s=599, max_requests=10, max_wait_s=600)
    assert is_due(waiting=1, oldest_waited_s=600, max_requests=10, max_wait_s=600)


def test_batches_stay_within_the_providers_request_and_byte_limits():
    assert limits_for("openai", 1000).max_requests == 1000
    assert limits_for("openai", 10**6) == PROVIDER_LIMITS["openai"]
    assert limits_for("anthropic", 10**6).max_requests == 100_000
    assert cut([100] * 50, BatchLimits(max_requests=20, max_bytes=10**9)) == 20
    assert cut([700] * 50, BatchLimits(max_requests=1000, max_bytes=10_000)) == 9  # 1,000 bytes each, 9,000 usable
    assert cut([10**9], BatchLimits(max_requests=10, max_bytes=10)) == 1  # one oversized request still goes alone
    assert cut([], BatchLimits(max_requests=10, max_bytes=10)) == 0


def test_a_retry_goes_round_the_lane_only_if_the_deadline_survives_another_round():
    round_s = round_estimate_s(max_wait_s=600, interval_s=60, last_round_s=1800)
    assert round_s == 600 + 120 + 1800
    assert survives_another_round(now=0, deadline=86400, round_s=round_s)
    assert not survives_another_round(now=86400 - 1000, deadline=86400, round_s=round_s)


def test_the_batch_price_is_half_the_realtime_price_unless_given():
    builtin = parse_prices("")  # no AII_PRICES: the built-in list prices of the default models
    realtime = estimate_cost(builtin, model="gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=1000)
    batch = estimate_cost(builtin, model="gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=1000,
                          batch=True)
    assert realtime == pytest.approx(0.00015 + 0.0006) and batch == pytest.approx(realtime / 2)
    prices = parse_prices('{"m": {"input_per_1k": 1, "output_per_1k": 2, "batch_input_per_1k": 0.25}}')
    assert estimate_cost(prices, model="m", provider="p", input_tokens=1000, output_tokens=1000, batch=True) == 1.25
    assert estimate_cost({}, model="local-echo-1", provider="local", input_tokens=9, output_tokens=9, batch=True) == 0


def test_options_batch_is_true_false_or_unset_and_unset_leaves_the_idempotency_fingerprint_alone():
    common = {"task_type": "text_generation", "request_content": {"prompt": "p"}, "requested_by": "svc"}
    assert validate_submission(**common, options={"batch": True}).options.batch is True
    assert validate_submission(**common).options.batch is None
    with pytest.raises(ValidationError) as caught:
        validate_submission(**common, options={"batch": "yes"})
    assert "options.batch" in caught.value.details
    unset = validate_submission(**common).fingerprint()
    assert unset == validate_submission(**common, options={"batch": None}).fingerprint()
    assert unset != validate_submission(**common, options={"batch": True}).fingerprint()


def test_a_lane_batch_round_trips_through_its_hash_and_shows_the_providers_id():
    batch = LaneBatch(id="b1", provider="openai", kind="openai", model="gpt-4o-mini", status=BatchStatus.SUBMITTED,
                      tasks=("t1", "t2"), created_at=100.0, submitted_at=101.0, provider_id="batch_x", started=True,
                      counts={"total": 2, "succeeded": 1}, provider_counts={"completed": 1})
    raw = {k: str(v) for k, v in batch.to_hash().items()}
    assert LaneBatch.from_hash(raw) == batch
    shown = batch.public(now=130.0)
    assert (shown["id"], shown["lane_id"], shown["status"], shown["age_s"]) == ("batch_x", "b1", "submitted", 30.0)
    assert shown["counts"] == {"total": 2, "succeeded": 1, "failed": 0, "requeued": 0, "discarded": 0}
