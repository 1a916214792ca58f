"""Failures stay where they belong: a caller's short deadline is not the provider's failure,
Redis losing its data does not lose the providers, and what is kept is bounded (DLQ
retention, a chat context over its cap refused before anything is written)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from aiintegration.commands import dlq, sweeps
from aiintegration.commands.chat import send_chat_message, start_chat_session
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.failures import handle_failure
from aiintegration.domain.providers import ProviderConfig
from aiintegration.errors import InvalidRequest, PayloadTooLarge
from tests.fake_provider import Behaviour, FakeProvider
from tests.support import RecordingPublisher, Worker, make_context, wait_status

KEY = "sk-test-LEAKCHECK-domains-0123456789"


@pytest.fixture(scope="module")
def slow(ctx, db):
    """The openai provider 3 s slow, behind a breaker that opens after 3 failures; a worker."""
    with FakeProvider() as server:
        server.default = Behaviour(delay_s=3.0)
        ctx.providers.set_order(["openai", "local"])
        with Worker(db, concurrency=8, env={"AII_BREAKER_FAIL_MAX": "3", "AII_BREAKER_RESET_S": "60"}):
            yield server


def burst(client, auth, ctx, n, **options):
    body = {"task_type": "text_generation", "request_content": {"prompt": "hurry"}, "requested_by": "impatient",
            "options": {"provider": "openai", "max_retries": 0, "retry_on_timeout": False, **options}}
    ids = [client.post("/v1/tasks", json=body, headers=auth).json["id"] for _ in range(n)]
    for task_id in ids:
        wait_status(ctx, task_id, ["dead_lettered"], timeout_s=30)


def test_a_burst_of_short_deadlines_against_a_slow_provider_leaves_its_breaker_closed(client, auth, ctx, slow):
    ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=slow.base_url, timeout_s=10))
    ctx.breakers["openai"].cb.close()
    burst(client, auth, ctx, 6, timeout_s=1)  # each caller gives up after 1 s; the provider's own timeout is 10 s
    assert ctx.breakers["openai"].public_state() == "closed"


def test_the_same_burst_past_the_providers_own_timeout_opens_it(client, auth, ctx, slow):
    ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=slow.base_url, timeout_s=1))
    ctx.breakers["openai"].cb.close()
    burst(client, auth, ctx, 4, timeout_s=10)  # the provider itself did not answer in its 1 s
    assert ctx.breakers["openai"].public_state() == "open"
    ctx.breakers["openai"].cb.close()


def test_new_tasks_still_succeed_after_redis_loses_every_key(client, auth, ctx, db):
    ctx.providers.set_order(["local"])
    body = {"task_type": "text_generation", "request_content": {"prompt": "before"}, "requested_by": "flush"}
    with Worker(db, concurrency=2):
        wait_status(ctx, client.post("/v1/tasks", json=body, headers=auth).json["id"], ["succeeded"])
        ctx.tasks.r.flushdb()  # a restart without persistence, or a failover to an empty replica
        after = client.post("/v1/tasks", json={**body, "request_content": {"prompt": "after"}}, headers=auth)
        assert after.status_code == 202
        record = wait_status(ctx, after.json["id"], ["succeeded"], timeout_s=20)
    assert record.result["provider"] == "local"
    assert ctx.providers.order() == ["local"]  # written back from the environment


def test_dead_lettered_records_leave_with_their_entries_after_the_dlq_retention(ctx, db):
    # No broker message: this module's worker (the `slow` fixture's) must not claim it first.
    unsent = replace(ctx, publisher=RecordingPublisher())
    task_id, _ = create_generation_task(unsent, task_type="text_generation", request_content={"prompt": "p"},
                                        requested_by="retention", options={"max_retries": 0})
    claim = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300)
    handle_failure(ctx, claim.record, InvalidRequest("no", provider="local"), run_id=claim.record.run_id)
    assert dlq.get_entry(ctx, task_id)["tenant"] == "celery"
    kept = make_context(db, dlq_retention_s=3600)
    assert sweeps.process_dead_letter_queue(kept)["dropped"] == 0
    short = make_context(db, dlq_retention_s=0)
    ctx.breakers["local"].cb.close()
    assert sweeps.process_dead_letter_queue(short)["dropped"] >= 1
    assert ctx.dlq.get(task_id) is None
    assert ctx.tasks.get(task_id) is not None  # kept one second more, then the cleanup sweep deletes it
    sweeps.cleanup_timed_out_tasks(replace(short, clock=lambda: time.time() + 2))
    assert ctx.tasks.get(task_id) is None and not ctx.tasks.r.exists(ctx.tasks.keys.task_stream(task_id))
    assert ctx.tasks.r.zscore("aii:idx:tasks", task_id) is None
    assert ctx.tasks.r.zscore("aii:idx:status:dead_lettered", task_id) is None


def test_an_include_context_over_the_cap_is_refused_before_anything_is_written(ctx):
    session = start_chat_session(ctx, "u", "i", {"about": "x" * 40_000})
    before = ctx.tasks.r.dump(ctx.chats.keys.chat(session["id"]))
    with pytest.raises(PayloadTooLarge):
        send_chat_message(ctx, session["id"], "and this", include_context={"more": "y" * 40_000})
    assert ctx.tasks.r.dump(ctx.chats.keys.chat(session["id"])) == before
    assert ctx.chats.history(session["id"]) == []
    assert ctx.tasks.r.ttl(ctx.chats.keys.chat(session["id"])) > 0  # an idle session expires
