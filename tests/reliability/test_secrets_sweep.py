"""The secrets sweep itself: it must find a planted key anywhere in Redis or in a log file,
and must not flag the one legitimate place, a provider's live config. (The sweep runs over
every test module's database and every log of the run: see tests/conftest.py.)"""

from __future__ import annotations

import json

from aiintegration.commands.providers import update_provider_config
from aiintegration.domain.providers import ProviderConfig
from tests.conftest import FAKE_KEYS
from tests.support.secrets import MARKER, file_leaks, redis_leaks

KEY = FAKE_KEYS["OPENAI_API_KEY"]


def test_a_live_config_key_is_allowed_but_its_history_keeps_only_a_redacted_key(ctx):
    ctx.providers.put(ProviderConfig("vendor", "openai_compatible", api_key=KEY, base_url="http://127.0.0.1:9/v1"))
    ctx.providers.put(ctx.providers.get("vendor").with_changes(timeout_s=12.0))
    assert ctx.providers.get("vendor").api_key == KEY  # still usable
    history = ctx.providers.history("vendor")
    assert history and MARKER not in json.dumps([c.api_key for c in history])
    assert redis_leaks(ctx.tasks.r) == []


def test_a_key_anywhere_else_in_redis_is_found(ctx):
    for plant in (lambda: ctx.tasks.r.hset("aii:task:planted", "error", f"bad key {KEY}"),
                  lambda: ctx.tasks.r.xadd("aii:events:planted", {"data": json.dumps({"key": KEY})}),
                  lambda: ctx.tasks.r.rpush("aii:dlq:planted", KEY),
                  lambda: ctx.tasks.r.set("aii:planted", KEY)):
        plant()
        assert redis_leaks(ctx.tasks.r), "a planted key went unnoticed"
        for key in ctx.tasks.r.scan_iter("aii:*planted"):
            ctx.tasks.r.delete(key)
    assert redis_leaks(ctx.tasks.r) == []


def test_a_key_in_a_log_file_is_found_but_not_in_a_redis_data_dir(tmp_path):
    (tmp_path / "worker.log").write_text(f"ok\nconnecting with {KEY}\n")
    (tmp_path / "valkey").mkdir()
    (tmp_path / "valkey" / "appendonly.aof").write_text(KEY)
    assert [leak.split(":")[0] for leak in file_leaks(tmp_path)] == ["worker.log"]


def test_updating_a_config_through_the_command_stores_no_key_outside_the_live_config(ctx):
    ctx.providers.put(ProviderConfig("vendor2", "local", api_key=KEY))
    update_provider_config(ctx, "vendor2", {"timeout_s": 9})
    assert redis_leaks(ctx.tasks.r) == []
