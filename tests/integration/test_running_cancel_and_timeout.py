"""Running work: a cancel stops it within 2 s and it never succeeds; a deadline stops it too.
Stopped means stopped: a provider request that would never end is closed, not abandoned."""

from __future__ import annotations

import time

import pytest

from aiintegration.commands.routing import REFRESH_S
from aiintegration.domain.providers import ProviderConfig
from tests.support import Worker, events_of, wait_for, wait_status
from tests.support.tarpit import Tarpit


@pytest.fixture(scope="module", autouse=True)
def slow_worker(ctx, db):
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 4000}))
    with Worker(db, concurrency=1) as w:
        yield w


def submit(client, auth, **options):
    body = {"task_type": "text_generation", "request_content": {"prompt": "slow"}, "requested_by": "svc",
            "options": options}
    return client.post("/v1/tasks", json=body, headers=auth).json["id"]


def test_cancelling_a_running_task_frees_its_worker_within_2s_and_discards_the_result(client, auth, ctx):
    task_id = submit(client, auth)
    wait_status(ctx, task_id, ["running"], timeout_s=10)
    resp = client.post(f"/v1/tasks/{task_id}/cancel", json={"cancellation_reason": "user closed tab"},
                       headers=auth)
    assert resp.status_code == 202 and resp.json["status"] == "cancelled"
    cancelled_at = time.monotonic()
    follower = submit(client, auth)  # the only worker slot must come free quickly
    started = wait_status(ctx, follower, ["running", "succeeded"], timeout_s=10)
    assert time.monotonic() - cancelled_at < 2.0, started
    time.sleep(4.5)  # past the abandoned call's natural end
    record = ctx.tasks.get(task_id)
    assert record.status == "cancelled" and record.result is None
    assert "task.succeeded" not in [e["type"] for e in events_of(ctx, task_id)]
    wait_status(ctx, follower, ["succeeded"], timeout_s=10)


def test_an_attempt_past_its_deadline_is_timed_out_and_dead_lettered_when_no_retry_is_left(client, auth, ctx):
    task_id = submit(client, auth, timeout_s=1, max_retries=0)
    record = wait_status(ctx, task_id, ["dead_lettered"], timeout_s=10)
    assert record.error["class"] == "TaskTimedOut"
    kinds = [e["type"] for e in events_of(ctx, task_id)]
    assert kinds[-3:] == ["task.timed_out", "task.failed", "task.dead_lettered"]
    finished = record.finished_at - record.started_at
    assert finished < 2.5, finished


@pytest.fixture(scope="module")
def tarpit(ctx):
    """An OpenAI-compatible provider whose answer body never ends: only a real cancel of the
    SDK's request (closing its connection) ends such a call."""
    server = Tarpit()
    ctx.providers.put(ProviderConfig("tarpit", "openai_compatible", api_key="sk-tarpit", base_url=server.url("/v1"),
                                     timeout_s=60))
    time.sleep(REFRESH_S + 0.1)  # the worker re-reads provider configs at most once a second
    yield server
    server.close()


def test_a_cancel_closes_the_provider_request_of_a_call_that_would_never_end(client, auth, ctx, tarpit):
    closed = len(tarpit.held_s)
    task_id = submit(client, auth, provider="tarpit")
    wait_for(lambda: tarpit.open == 1, timeout_s=10)
    wait_status(ctx, task_id, ["running"], timeout_s=5)
    assert client.post(f"/v1/tasks/{task_id}/cancel", json={"cancellation_reason": "enough"},
                       headers=auth).status_code == 202
    cancelled_at = time.monotonic()
    wait_for(lambda: len(tarpit.held_s) > closed, timeout_s=5)
    assert time.monotonic() - cancelled_at < 2.0 and tarpit.open == 0
    assert ctx.tasks.get(task_id).status == "cancelled"


def test_a_deadline_closes_the_provider_request_of_a_call_that_would_never_end(client, auth, ctx, tarpit):
    closed = len(tarpit.held_s)
    task_id = submit(client, auth, provider="tarpit", timeout_s=1, max_retries=0)
    record = wait_status(ctx, task_id, ["dead_lettered"], timeout_s=10)
    assert record.error["class"] == "TaskTimedOut"
    wait_for(lambda: len(tarpit.held_s) > closed, timeout_s=5)
    path, held_s = tarpit.held_s[-1]
    assert path == "/v1/chat/completions" and held_s < 2.0 and tarpit.open == 0
