"""The batch lane through a real worker and a real beat, against the fake provider's batch
APIs through the real openai and anthropic SDKs: tasks on both providers finish in batches at
half the price; a per-item 400 is dead-lettered with the provider's message and a 5xx goes to
the next batch; an expired batch's unanswered tasks are submitted again; a task cancelled in a
submitted batch is cancelled at once and its answer discarded; realtime tasks run at their
usual speed meanwhile. Crashes: test_batch_lane_crashes.py."""

from __future__ import annotations

import os
import statistics
import time

import pytest

from aiintegration.domain.pricing import estimate_cost
from tests.fake_provider import BatchBehaviour, FakeProvider
from tests.support import Beat, Worker, events_of, wait_for, wait_status

OPENAI_KEY = "sk-LEAKCHECK-lane-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-LEAKCHECK-lane-0123456789"
# Beat collects and polls every 0.3 s, a group goes once its oldest waited 0.5 s, 100 to a batch.
LANE_ENV = {"AII_BATCH_INTERVAL_S": "0.3", "AII_BATCH_MAX_WAIT_S": "0.5", "AII_BATCH_MAX_REQUESTS": "100"}
N = int(os.environ.get("AII_LANE_TASKS", "500"))  # the 500, across both providers
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-5-5"}


@pytest.fixture(scope="module")
def lane(ctx, db):
    with FakeProvider(seed=13) as server:
        for config in server.configs(openai_key=OPENAI_KEY, anthropic_key=ANTHROPIC_KEY):
            ctx.providers.put(config)
        ctx.providers.set_order(["local", "openai", "anthropic"])  # realtime work stays on local
        with Worker(db, concurrency=8, env=LANE_ENV) as worker, Beat(db, env=LANE_ENV, name="beat"):
            yield server, worker


@pytest.fixture(autouse=True)
def normal(lane):
    lane[0].batch = BatchBehaviour(delay_s=0.4)
    yield


def submit(client, auth, prompt, provider="openai", **options):
    body = {"task_type": "text_generation", "request_content": {"prompt": prompt}, "requested_by": "lane",
            "priority": 1, "options": {"provider": provider, "batch": True, **options}}
    resp = client.post("/v1/tasks", json=body, headers=auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def finished(ctx, ids, timeout_s=30.0):
    statuses = ("succeeded", "dead_lettered", "cancelled")
    wait_for(lambda: all(r and r.status in statuses for r in ctx.tasks.get_many(ids)), timeout_s=timeout_s,
             interval_s=0.1, what=f"{len(ids)} lane tasks finished")
    return {r.id: r for r in ctx.tasks.get_many(ids)}


def kinds(ctx, task_id):
    return [e["type"] for e in events_of(ctx, task_id)]


def test_lane_tasks_on_both_providers_succeed_in_batches_at_half_the_price(client, auth, ctx, lane):
    fake, _ = lane
    ids = {submit(client, auth, f"summary {i}", provider="openai" if i % 2 else "anthropic"): i for i in range(N)}
    records = finished(ctx, list(ids), timeout_s=60)
    assert {r.status for r in records.values()} == {"succeeded"}
    for record in records.values():
        provider = record.result["provider"]
        usage = record.result["usage"]
        realtime = estimate_cost(ctx.settings.prices, model=MODELS[provider], provider=provider,
                                 input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"])
        assert record.result["batch"] is True and record.result["model"] == MODELS[provider]
        assert record.cost == pytest.approx(realtime / 2, abs=1e-8) and record.cost > 0
        assert record.result["batch_id"].startswith("batch_" if provider == "openai" else "msgbatch_")
    sample = next(iter(records))
    assert kinds(ctx, sample) == ["task.created", "task.batched", "task.started", "task.succeeded"]
    batched = events_of(ctx, sample)[1]
    assert batched["batch_id"] == records[sample].result["batch_id"] and batched["provider"] in MODELS
    assert fake.batch_successes() == {task_id: 1 for task_id in ids}  # each task in exactly one successful batch
    mine = [b for b in fake.batch_records if set(b.custom_ids) & set(ids)]
    assert {b.provider for b in mine} == {"openai", "anthropic"} and max(len(b.custom_ids) for b in mine) <= 100
    listed = client.get("/v1/batches?limit=200", headers=auth).json["items"]
    assert sum(b["counts"]["succeeded"] for b in listed if b["id"] in {m.id for m in mine}) == N


def test_another_service_asks_for_the_lane_by_task_name(ctx, lane):
    from celery import Celery

    url = ctx.settings.redis_url  # a plain client of another service: only the broker URL
    celery = Celery("nightly-service", broker=url, backend=url, set_as_current=False)
    reply = celery.send_task("aiintegration.create_generation_task", kwargs={
        "task_type": "chat_completion", "request_content": {"messages": [{"role": "user", "content": "later"}]},
        "requested_by": "nightly-service", "options": {"provider": "anthropic", "batch": True}}).get(timeout=10)
    assert reply["ok"] is True
    record = wait_status(ctx, reply["id"], ["succeeded"], timeout_s=20)
    assert record.result["batch"] is True and record.tenant == "celery"
    assert kinds(ctx, record.id) == ["task.created", "task.batched", "task.started", "task.succeeded"]


def test_a_per_item_400_goes_to_the_dlq_with_the_message_and_a_5xx_to_the_next_batch(client, auth, ctx, lane):
    fake, _ = lane
    tried: set[str] = set()

    def fate(custom_id, body):
        text = str(body["messages"])
        if "refuse me" in text:
            return 400, "max_tokens is too large for this model"
        if "flaky" in text and custom_id not in tried:
            tried.add(custom_id)
            return 500, "the model is overloaded"
        return None

    fake.batch = BatchBehaviour(delay_s=0.4, fail=fate)
    ok = [submit(client, auth, f"fine {i}", provider=p) for i, p in enumerate(["openai", "anthropic"])]
    bad = [submit(client, auth, "refuse me", provider=p) for p in ("openai", "anthropic")]
    flaky = [submit(client, auth, "flaky", provider=p) for p in ("openai", "anthropic")]
    records = finished(ctx, ok + bad + flaky)
    assert all(records[t].status == "succeeded" and records[t].attempts == 1 for t in ok)
    for task_id in bad:
        record = records[task_id]
        assert (record.status, record.error["class"], record.attempts) == ("dead_lettered", "InvalidRequest", 1)
        assert record.error["message"] == "max_tokens is too large for this model"
        assert kinds(ctx, task_id)[-2:] == ["task.failed", "task.dead_lettered"]
        entry = client.get(f"/v1/dlq?provider={record.provider}&error_class=InvalidRequest", headers=auth).json
        assert task_id in {e["task_id"] for e in entry["items"]}
    for task_id in flaky:
        record = records[task_id]
        assert (record.status, record.attempts) == ("succeeded", 2) and record.result["batch"] is True
        batches = [e["batch_id"] for e in events_of(ctx, task_id) if e["type"] == "task.batched"]
        assert len(batches) == 2 and batches[0] != batches[1] and record.result["batch_id"] == batches[1]
        assert kinds(ctx, task_id).count("task.retrying") == 1
        outcomes = [b.outcomes[task_id] for b in fake.batch_records if task_id in b.outcomes]
        assert outcomes == ["errored", "succeeded"]


def test_an_expired_batch_sends_its_unanswered_tasks_back_and_they_finish_in_the_next(client, auth, ctx, lane):
    fake, _ = lane
    fake.batch = BatchBehaviour(delay_s=0.4, expire_after=1)
    before = len(fake.batch_records)
    ids = {p: [submit(client, auth, f"expiring {i}", provider=p) for i in range(3)] for p in ("openai", "anthropic")}
    wait_for(lambda: {b.provider for b in fake.batch_records[before:]} == {"openai", "anthropic"}, timeout_s=10,
             what="a batch on each provider")
    fake.batch = BatchBehaviour(delay_s=0.4)  # the next batches complete
    everything = ids["openai"] + ids["anthropic"]
    records = finished(ctx, everything)
    assert {r.status for r in records.values()} == {"succeeded"}
    for provider, tasks in ids.items():
        first = next(b for b in fake.batch_records[before:] if b.provider == provider)
        expired = [t for t in tasks if first.outcomes.get(t) == "expired"]
        assert len(expired) == 2, first.outcomes
        for task_id in expired:
            retrying = [e for e in events_of(ctx, task_id) if e["type"] == "task.retrying"]
            assert [e["reason"] for e in retrying] == ["batch_expired"]
            assert records[task_id].result["batch_id"] != first.id and records[task_id].attempts == 2
    assert all(fake.batch_successes()[t] == 1 for t in everything)


def test_a_task_cancelled_in_a_submitted_batch_is_cancelled_at_once_and_its_answer_discarded(client, auth, ctx,
                                                                                            lane):
    fake, _ = lane
    fake.batch = BatchBehaviour(delay_s=2.0)
    keep, drop = submit(client, auth, "keep me", provider="anthropic"), submit(client, auth, "drop me",
                                                                               provider="anthropic")
    wait_status(ctx, drop, ["running"], timeout_s=10)
    resp = client.post(f"/v1/tasks/{drop}/cancel", json={"cancellation_reason": "not needed"}, headers=auth)
    assert resp.status_code == 202 and resp.json["status"] == "cancelled"
    records = finished(ctx, [keep, drop])
    assert records[keep].status == "succeeded"
    assert (records[drop].status, records[drop].result) == ("cancelled", None)
    assert fake.batch_successes()[drop] == 1  # the provider answered it; the answer was thrown away
    assert kinds(ctx, drop)[-1] == "task.cancelled" and "task.succeeded" not in kinds(ctx, drop)


def test_realtime_tasks_are_not_slowed_by_the_lane(client, auth, ctx, lane):
    def realtime_round(n=60):  # spread over ~2 s: the lane's collect, submit, poll and apply of 200 fall inside
        ids = []
        for i in range(n):
            body = {"task_type": "text_generation", "request_content": {"prompt": f"now {i}"},
                    "requested_by": "realtime", "priority": 7}
            ids.append(client.post("/v1/tasks", json=body, headers=auth).json["id"])
            time.sleep(0.03)
        records = finished(ctx, ids)
        assert {r.status for r in records.values()} == {"succeeded"}
        return statistics.median(r.finished_at - r.created_at for r in records.values())

    realtime_round(5)  # warm up: a worker imports the SDKs on its first task
    quiet = realtime_round()
    lane_ids = [submit(client, auth, f"bulk {i}", provider="openai" if i % 2 else "anthropic") for i in range(200)]
    busy = realtime_round()  # while the lane collects, submits, polls and applies those
    finished(ctx, lane_ids)
    print(f"realtime median created->finished: {quiet * 1000:.1f} ms quiet, {busy * 1000:.1f} ms with the lane busy")
    assert busy < max(3 * quiet, quiet + 0.1), (quiet, busy)
