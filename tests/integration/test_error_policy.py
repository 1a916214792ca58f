"""The error policy end to end: the real openai SDK in a real worker against the fake provider
server — permanent errors to the DLQ, Retry-After honoured, flaky providers absorbed by
retries, and the shared circuit breaker moving traffic to the next provider and back."""

from __future__ import annotations

import json
import time

import pytest

from aiintegration.domain.providers import ProviderConfig
from tests.fake_provider import Behaviour, FakeProvider, Fault
from tests.support import Worker, events_of, wait_for, wait_status

KEY = "sk-test-LEAKCHECK-1234567890"


@pytest.fixture(scope="module")
def fake(ctx, db):
    with FakeProvider(seed=3) as server:
        ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=server.base_url, timeout_s=5))
        ctx.providers.set_order(["openai", "local"])
        env = {"AII_BREAKER_FAIL_MAX": "3", "AII_BREAKER_RESET_S": "2"}
        with Worker(db, concurrency=8, env=env) as worker:
            yield server, worker


@pytest.fixture(autouse=True)
def healthy(fake):
    server, _ = fake
    server.default = Behaviour()
    yield


def submit(client, auth, **options):
    body = {"task_type": "text_generation", "request_content": {"prompt": "policy"}, "requested_by": "policy",
            "options": options}
    resp = client.post("/v1/tasks", json=body, headers=auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def test_a_400_goes_to_the_dlq_at_once_with_the_providers_message(client, auth, ctx, fake):
    fake[0].script(Fault(status=400, message="max_tokens is too large for this model"))
    record = wait_status(ctx, submit(client, auth, provider="openai"), ["dead_lettered"])
    assert record.attempts == 1 and record.error["class"] == "InvalidRequest"
    assert "max_tokens is too large" in record.error["message"]
    assert [e["type"] for e in events_of(ctx, record.id)][-2:] == ["task.failed", "task.dead_lettered"]
    entry = client.get("/v1/dlq?error_class=InvalidRequest", headers=auth).json["items"][0]
    assert entry["task_id"] == record.id and entry["provider"] == "openai"


def test_retry_after_delays_the_retry_by_at_least_that_long(client, auth, ctx, fake):
    fake[0].script(Fault(status=429, retry_after=2))
    task_id = submit(client, auth, provider="openai")
    record = wait_status(ctx, task_id, ["succeeded"], timeout_s=20)
    assert record.attempts == 2 and record.result["provider"] == "openai"
    events = events_of(ctx, task_id)
    retrying = next(e for e in events if e["type"] == "task.retrying")
    assert retrying["delay_s"] >= 2 and retrying["reason"] == "rate_limited"
    from datetime import datetime

    starts = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in events if e["type"] == "task.started"]
    assert (starts[1] - starts[0]).total_seconds() >= 2.0


def test_thirty_percent_injected_5xx_still_ends_with_every_task_succeeded(client, auth, ctx, fake):
    fake[0].default = Behaviour(fail_rate={500: 0.15, 503: 0.15})
    ids = [submit(client, auth, provider="openai", max_retries=6) for _ in range(20)]
    records = [wait_status(ctx, i, ["succeeded", "dead_lettered"], timeout_s=30) for i in ids]
    assert [r.status for r in records] == ["succeeded"] * 20
    assert sum(r.attempts for r in records) > 20  # faults really happened and were retried


def test_a_task_pinned_to_a_provider_whose_breaker_is_open_retries_when_a_probe_may_go(client, auth, ctx, fake):
    """No retry is spent against a breaker that is still open: the retry waits until the
    breaker lets a probe through (the worker's reset is 2 s; the tests' backoff is 0.05 s)."""

    breaker = ctx.breakers["openai"].cb
    breaker.close()  # a test before may have left it open since earlier
    breaker.open()
    opened = time.time()
    time.sleep(0.6)  # a worker's view of a breaker may be up to 0.5 s old (STATE_TTL_S)
    task_id = submit(client, auth, provider="openai", max_retries=1)
    record = wait_status(ctx, task_id, ["succeeded"], timeout_s=20)
    events = events_of(ctx, task_id)
    retrying = [e for e in events if e["type"] == "task.retrying"]
    assert record.attempts == 2 and record.result["provider"] == "openai" and len(retrying) == 1
    assert retrying[0]["reason"] == "provider_unavailable"
    from datetime import datetime

    starts = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
              for e in events if e["type"] == "task.started"]
    # pybreaker's Redis storage keeps opened_at in whole seconds, so the breaker lets a probe
    # through 2 s after the second it opened in
    assert starts[1] >= int(opened) + 2 - 0.05, f"the retry ran while the breaker was still open: {opened=} {events}"
    assert ctx.breakers["openai"].public_state() == "closed"  # the probe succeeded


def test_an_open_breaker_moves_traffic_to_the_next_provider_and_a_probe_closes_it(client, auth, ctx, fake):
    server, _ = fake
    server.default = Behaviour(fail_rate={503: 1.0})
    ids = [submit(client, auth, max_retries=5) for _ in range(6)]
    records = [wait_status(ctx, i, ["succeeded"], timeout_s=30) for i in ids]
    assert {r.result["provider"] for r in records} == {"local"}
    opened = [json.loads(f["data"]) for _, f in ctx.tasks.r.xrange("aii:events") if f["type"] == "provider.breaker_opened"]
    assert opened and opened[-1]["provider"] == "openai"
    primary = client.get("/v1/providers", headers=auth).json["providers"][0]
    assert primary["breaker"] in ("open", "half_open")
    assert primary["error_rate"] is not None and primary["error_rate"] > 0
    server.default = Behaviour()
    wait_for(lambda: wait_status(ctx, submit(client, auth), ["succeeded"]).result["provider"] == "openai",
             timeout_s=15, interval_s=0.5, what="traffic back on the recovered primary")
    closed = [f for _, f in ctx.tasks.r.xrange("aii:events") if f["type"] == "provider.breaker_closed"]
    assert closed


def test_a_config_update_with_a_bad_key_is_rejected_and_the_old_config_keeps_working(client, auth, ctx, fake):
    fake[0].script(Fault(status=401, message="Incorrect API key provided"))
    resp = client.put("/v1/providers/openai/config", json={"api_key": "sk-bad-LEAKCHECK-99999999"}, headers=auth)
    assert resp.status_code == 409 and resp.json["error"]["details"]["applied"] is False
    assert "sk-bad-LEAKCHECK-99999999" not in resp.get_data(as_text=True)
    assert ctx.providers.get("openai").api_key == KEY
    record = wait_status(ctx, submit(client, auth, provider="openai"), ["succeeded"])
    assert record.result["provider"] == "openai"


def test_a_chat_answer_cut_midway_is_marked_incomplete_then_answered_cleanly(client, auth, ctx, fake):
    fake[0].script(Fault(drop_after=2))
    sid = client.post("/v1/chat/sessions", json={"user_id": "u", "item_id": "i", "initial_context": "ctx"},
                      headers=auth).json["id"]
    sent = client.post(f"/v1/chat/sessions/{sid}/messages", json={"message": "go"}, headers=auth).json
    wait_status(ctx, sent["task_id"], ["succeeded"], timeout_s=20)

    def session_events():
        return [json.loads(f["data"]) for _, f in ctx.tasks.r.xrange(f"aii:events:chat:{sid}")]

    # The record turns succeeded first, then the completion is appended (so a cancel in
    # between can never leave a "completed" answer behind).
    events = wait_for(lambda: (ev := session_events()) and ev[-1]["type"] == "chat.response.completed" and ev,
                      what="the completed answer")
    answer = [e for e in events if e["type"].startswith("chat.response")]
    first = [e for e in answer if e["attempt"] == 1]
    second = [e for e in answer if e["attempt"] == 2]
    assert [e["type"] for e in first] == ["chat.response.delta"] * 2 + ["chat.response.incomplete"]
    assert second[-1]["type"] == "chat.response.completed"
    assert [e["seq"] for e in second[:-1]] == list(range(1, len(second)))
    assert "".join(e["text"] for e in second[:-1]) == second[-1]["text"]
    history = client.get(f"/v1/chat/sessions/{sid}", headers=auth).json["history"]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"] == second[-1]["text"]


def test_no_api_key_appears_in_responses_events_or_worker_logs(client, auth, ctx, fake):
    _, worker = fake
    listing = client.get("/v1/tasks?requested_by=policy&limit=200", headers=auth).get_data(as_text=True)
    assert KEY not in listing and KEY not in client.get("/v1/providers", headers=auth).get_data(as_text=True)
    assert all(KEY not in json.dumps(f) for _, f in ctx.tasks.r.xrange("aii:events"))
    assert KEY not in worker.output()
