"""The pure domain: states, backoff, validation, the record shape. No Redis."""

from __future__ import annotations

import random

import pytest

from aiintegration.domain.backoff import compute_backoff
from aiintegration.domain.records import PUBLIC_FIELDS, TaskOptions, TaskRecord, iso
from aiintegration.domain.states import ALLOWED_FROM, TERMINAL, TaskStatus, terminal_event, to_broker_priority
from aiintegration.domain.submission import validate_submission
from aiintegration.errors import PayloadTooLarge, ValidationError

S = TaskStatus
OK = {"task_type": "text_generation", "request_content": {"prompt": "hi"}, "requested_by": "svc"}


@pytest.mark.parametrize("src,dst", [(S.QUEUED, S.RUNNING), (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.RETRYING),
                                     (S.RUNNING, S.TIMED_OUT), (S.TIMED_OUT, S.RETRYING), (S.RETRYING, S.RUNNING),
                                     (S.RUNNING, S.DEAD_LETTERED), (S.DEAD_LETTERED, S.QUEUED),
                                     (S.QUEUED, S.CANCELLED), (S.RUNNING, S.CANCELLED)])
def test_the_documented_transitions_are_allowed(src, dst):
    assert src in ALLOWED_FROM[dst]


@pytest.mark.parametrize("terminal", [S.SUCCEEDED, S.CANCELLED])
@pytest.mark.parametrize("target", [S.RUNNING, S.SUCCEEDED, S.RETRYING, S.QUEUED, S.CANCELLED])
def test_a_finished_task_can_never_move_again(terminal, target):
    assert terminal not in ALLOWED_FROM[target]


def test_cancelled_is_never_followed_by_succeeded_and_terminal_states_are_known():
    assert S.CANCELLED not in ALLOWED_FROM[S.SUCCEEDED]
    assert TERMINAL == {S.SUCCEEDED, S.CANCELLED, S.DEAD_LETTERED}
    assert terminal_event("task.dead_lettered") and not terminal_event("task.running")
    assert not terminal_event("chat.succeeded")


@pytest.mark.parametrize("api,broker", [(9, 0), (0, 9), (5, 4)])
def test_api_priority_nine_is_the_brokers_most_urgent(api, broker):
    assert to_broker_priority(api) == broker


def test_backoff_doubles_from_the_base_up_to_the_cap():
    assert [compute_backoff(n, rand=lambda: 1.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert compute_backoff(3, rand=lambda: 0.0) == 0


def test_backoff_jitter_stays_within_its_ceiling():
    rng = random.Random(7)
    assert all(0 <= compute_backoff(4, rand=rng.random) <= 16 for _ in range(1000))


def test_retry_after_wins_when_longer_and_is_capped_separately():
    assert compute_backoff(1, rand=lambda: 0.0, retry_after_s=2) == 2
    assert compute_backoff(1, rand=lambda: 0.0, retry_after_s=500) == 120
    assert compute_backoff(6, rand=lambda: 1.0, retry_after_s=1) == 60


def test_a_valid_submission_gets_its_defaults():
    sub = validate_submission(**OK)
    assert sub.priority == 5 and sub.metadata == {}
    assert sub.options.to_dict() == {"provider": None, "timeout_s": 300.0, "max_retries": 3,
                                     "retry_on_timeout": True, "stream": False, "callback_url": None,
                                     "batch": None}


@pytest.mark.parametrize("change,field", [
    ({"task_type": "video"}, "task_type"),
    ({"request_content": {"prompt": "  "}}, "request_content.prompt"),
    ({"task_type": "chat_completion", "request_content": {"messages": "hi"}}, "request_content.messages"),
    ({"task_type": "chat_completion", "request_content": {"messages": [{"role": "bot", "content": "x"}]}},
     "request_content.messages[0]"),
    ({"priority": 10}, "priority"), ({"priority": -1}, "priority"), ({"priority": True}, "priority"),
    ({"priority": "5"}, "priority"), ({"metadata": []}, "metadata"), ({"options": {"colour": 1}}, "options"),
    ({"options": {"timeout_s": 0}}, "options.timeout_s"), ({"options": {"max_retries": 11}}, "options.max_retries"),
    ({"options": {"callback_url": "ftp://x"}}, "options.callback_url"), ({"requested_by": ""}, "requested_by"),
    ({"idempotency_key": "k" * 201}, "idempotency_key"),
    ({"task_type": "image_generation", "request_content": {"prompt": "x", "size": "big"}}, "request_content.size"),
])
def test_each_invalid_field_is_named_in_the_error(change, field):
    with pytest.raises(ValidationError) as caught:
        validate_submission(**{**OK, **change})
    assert field in caught.value.details and caught.value.http_status == 422


def test_several_problems_are_reported_together():
    with pytest.raises(ValidationError) as caught:
        validate_submission(task_type="x", request_content={}, requested_by="", priority=42)
    assert {"task_type", "requested_by", "priority"} <= set(caught.value.details)


def test_oversize_content_and_metadata_are_413():
    with pytest.raises(PayloadTooLarge) as big:
        validate_submission(**{**OK, "request_content": {"prompt": "x" * (257 * 1024)}})
    assert big.value.http_status == 413
    with pytest.raises(PayloadTooLarge):
        validate_submission(**{**OK, "metadata": {"m": "y" * (17 * 1024)}})


def test_times_are_iso_utc_with_microseconds():
    assert iso(0) == "1970-01-01T00:00:00.000000Z" and iso(None) is None
    assert iso(1.5).endswith(".500000Z")


def test_a_stored_hash_decodes_to_the_public_record_shape():
    raw = {"id": "t", "task_type": "text_generation", "requested_by": "svc", "status": "queued", "priority": "7",
           "attempts": "0", "request_content": '{"prompt":"p"}', "metadata": "{}", "options": '{"max_retries":2}',
           "result": "", "error": "", "created_at": "1.25", "started_at": "", "run_id": "internal",
           "max_retries": "2", "a_field_from_a_newer_version": "x"}
    record = TaskRecord.from_hash(raw).public()
    assert tuple(record) == PUBLIC_FIELDS
    assert record["priority"] == 7 and record["result"] is None and record["request_content"] == {"prompt": "p"}
    assert record["created_at"] == "1970-01-01T00:00:01.250000Z" and "run_id" not in record
    assert record["max_retries"] == 2 and record["options"]["timeout_s"] == 300.0


def test_a_record_survives_its_hash_round_trip():
    record = TaskRecord(id="t", task_type="chat_completion", status=S.RETRYING, requested_by="svc",
                        request_content={"messages": [{"role": "user", "content": "ü"}]}, priority=9,
                        metadata={"k": [1, 2]}, options=TaskOptions(provider="openai", stream=True),
                        attempts=2, error={"code": "rate_limited"}, created_at=1.5, retry_at=9.25, budget_from=1)
    stored = {k: str(v) for k, v in record.to_hash().items()}
    assert TaskRecord.from_hash(stored) == record
    assert stored["max_retries"] == "3" and stored["timeout_s"] == "300.0"  # the scripts read these


def test_the_stable_task_names_are_all_registered():
    from aiintegration.celery_app import app

    app.loader.import_default_modules()
    names = {"create_generation_task", "process_task", "retry_task", "cancel_task", "start_chat_session",
             "send_chat_message", "close_chat_session", "process_pending_tasks", "cleanup_timed_out_tasks",
             "process_dead_letter_queue", "switch_provider", "update_provider_config"}
    assert {f"aiintegration.{n}" for n in names} <= set(app.tasks)


def test_cost_uses_the_models_price_then_the_providers_then_zero():
    from aiintegration.domain.pricing import estimate_cost, parse_prices

    prices = parse_prices('{"gpt-x": {"input_per_1k": 1, "output_per_1k": 2}, "openai": {"input_per_1k": 10}}')
    assert estimate_cost(prices, model="gpt-x", provider="openai", input_tokens=500, output_tokens=1000) == 2.5
    assert estimate_cost(prices, model="other", provider="openai", input_tokens=100, output_tokens=100) == 1.0
    assert estimate_cost(prices, model="local-echo-1", provider="local", input_tokens=9, output_tokens=9) == 0


def test_cached_prompt_tokens_cache_writes_and_the_batch_lane_are_priced_apart():
    from aiintegration.domain.pricing import estimate_cost, parse_prices

    prices = parse_prices("")  # the built-in table
    # gpt-4o-mini: 1,000 prompt tokens of which 600 cached, 200 output:
    # 400 x 0.00015/1k + 600 x 0.000075/1k + 200 x 0.0006/1k = 0.00006 + 0.000045 + 0.00012
    assert estimate_cost(prices, model="gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=200,
                         cached_input_tokens=600) == 0.000225
    # claude-sonnet-5-5: 2,000 prompt tokens = 1,000 plain + 500 cache reads + 500 cache writes, 100 output:
    # 1000 x 0.003 + 500 x 0.0003 + 500 x 0.00375 + 100 x 0.015 (per 1k) = 0.003 + 0.00015 + 0.001875 + 0.0015
    assert estimate_cost(prices, model="claude-sonnet-5-5", provider="anthropic", input_tokens=2000,
                         output_tokens=100, cached_input_tokens=500, cache_write_tokens=500) == 0.006525
    realtime = estimate_cost(prices, model="gpt-4o", provider="openai", input_tokens=1000, output_tokens=1000)
    assert estimate_cost(prices, model="gpt-4o", provider="openai", input_tokens=1000, output_tokens=1000,
                         batch=True) == realtime / 2


def test_a_named_openai_compatible_provider_is_configured_from_the_environment():
    from aiintegration.config import Settings
    from aiintegration.domain.providers import default_configs

    env = {"AII_PROVIDERS": "vllm,local", "AII_PROVIDER_VLLM_BASE_URL": "http://127.0.0.1:9/v1",
           "AII_PROVIDER_VLLM_MODEL": "llama", "AII_PROVIDER_VLLM_API_KEY": "sk-vllm-0123456789abcdef",
           "UNRELATED_SECRET": "x"}
    settings = Settings.from_env(env)
    vllm, local = default_configs(settings.providers, settings.provider_env)
    assert (vllm.name, vllm.kind, vllm.base_url, vllm.api_key) == ("vllm", "openai_compatible",
                                                                   "http://127.0.0.1:9/v1", "sk-vllm-0123456789abcdef")
    assert vllm.models == {"text_generation": "llama", "chat_completion": "llama"}
    assert local.kind == "local" and "UNRELATED_SECRET" not in settings.provider_env


def test_openai_and_anthropic_take_their_model_from_the_environment_too():
    from aiintegration.config import Settings
    from aiintegration.domain.providers import default_configs

    env = {"AII_PROVIDERS": "openai,anthropic", "AII_PROVIDER_ANTHROPIC_MODEL": "claude-x",
           "ANTHROPIC_API_KEY": "sk-ant-0123456789abcdef", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    settings = Settings.from_env(env)
    openai_cfg, anthropic_cfg = default_configs(settings.providers, settings.provider_env)
    assert openai_cfg.models == {} and openai_cfg.base_url == "http://127.0.0.1:9/v1"
    assert anthropic_cfg.models == {"text_generation": "claude-x", "chat_completion": "claude-x"}
    assert anthropic_cfg.api_key == "sk-ant-0123456789abcdef"


def test_the_anthropic_default_model_is_not_one_the_sdk_lists_as_retiring(caplog):
    from aiintegration.providers import anthropic_provider as ap

    for model in set(ap.AnthropicProvider.default_models.values()):
        assert ap.retirement(model) is None, f"default {model} retires on {ap.retirement(model)}"
    assert ap.retirement("claude-sonnet-4-5")  # the table is where the test expects it
    ap._checked_models.discard("claude-sonnet-4-5")
    with caplog.at_level("WARNING", logger=ap.__name__):
        ap._warn_if_retiring("claude-sonnet-4-5")
        ap._warn_if_retiring("claude-sonnet-4-5")
    assert len([r for r in caplog.records if "end of life" in r.getMessage()]) == 1
