"""The batch lane's commands called directly (no Celery worker): choosing the lane, waiting in
it, collecting and polling against the fake provider through the real SDKs, the realtime
fallback near a deadline, the pending sweep, cancellation and the operators' listing. The
same lane through real workers and beat: test_batch_lane.py."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from aiintegration.commands.batch_results import poll_batches
from aiintegration.commands.batches import collect_batches
from aiintegration.commands.context import Context
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.lifecycle import cancel_task
from aiintegration.commands.process import process_task
from aiintegration.commands.providers import switch_provider
from aiintegration.commands.sweeps import process_pending_tasks
from aiintegration.config import Settings
from aiintegration.domain.batching import parse_policy
from aiintegration.domain.pricing import estimate_cost
from aiintegration.web import create_app
from tests.conftest import TOKEN
from tests.fake_provider import BatchBehaviour, FakeProvider
from tests.support import RecordingPublisher, events_of, redis_url, wait_for

OPENAI_KEY = "sk-LEAKCHECK-lane-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-LEAKCHECK-lane-0123456789"


@pytest.fixture(scope="module")
def fake():
    with FakeProvider(seed=11) as server:
        yield server


@pytest.fixture(scope="module")
def lctx(db, fake):
    settings = Settings.from_env({**os.environ, "REDIS_URL": redis_url(db)})
    settings = replace(settings, batch_max_wait_s=0.0, batch_interval_s=0.2, batch_max_requests=50)
    ctx = Context.build(settings, RecordingPublisher())
    for config in fake.configs(openai_key=OPENAI_KEY, anthropic_key=ANTHROPIC_KEY):
        ctx.providers.put(config)
    ctx.providers.set_order(["openai", "anthropic", "local"])
    ctx.router.invalidate()
    return ctx


@pytest.fixture(autouse=True)
def fresh(lctx, fake):
    fake.batch = BatchBehaviour(delay_s=0.2)
    lctx.publisher.task_ids.clear()
    yield


def create(ctx, prompt, provider="openai", task_type="text_generation", **options):
    content = {"prompt": prompt} if task_type != "chat_completion" else {"messages": [{"role": "user",
                                                                                       "content": prompt}]}
    return create_generation_task(ctx, task_type=task_type, request_content=content, requested_by="lane-test",
                                  options={"provider": provider, "batch": True, **options})[0]


def run_lane(ctx, timeout_s=15.0):
    """What beat does, until every lane batch has ended."""
    end = time.monotonic() + timeout_s
    collect_batches(ctx)
    while ctx.lane.live():
        assert time.monotonic() < end, [b.public(time.time()) for b in ctx.lane.get_many(ctx.lane.live())]
        time.sleep(0.1)
        poll_batches(ctx)
        collect_batches(ctx)


def test_a_lane_task_gets_no_worker_message_and_a_stray_one_hands_it_back(lctx):
    task_id = create(lctx, "wait for the batch")
    record = lctx.tasks.get(task_id)
    assert (record.status, record.lane, record.lane_group, record.options.batch) == \
        ("queued", "batch", "openai|gpt-4o-mini", True)
    assert lctx.publisher.task_ids == [] and lctx.lane.depths()["openai|gpt-4o-mini"] >= 1
    assert process_task(lctx, task_id, worker_id="stray@test") == "lane:waiting"
    again = lctx.tasks.get(task_id)
    assert (again.status, again.attempts, again.started_at) == ("queued", 0, None)
    run_lane(lctx)
    assert lctx.tasks.get(task_id).status == "succeeded"


def test_without_the_option_a_task_stays_realtime_unless_the_policy_takes_it(lctx):
    plain = create_generation_task(lctx, task_type="text_generation", request_content={"prompt": "now"},
                                   requested_by="lane-test", priority=1)[0]
    assert lctx.publisher.task_ids == [plain] and lctx.tasks.get(plain).lane is None
    nightly = replace(lctx, settings=replace(lctx.settings, batch_policy=parse_policy('{"max_priority": 2}')))
    low = create_generation_task(nightly, task_type="chat_completion", requested_by="lane-test", priority=2,
                                 request_content={"messages": [{"role": "user", "content": "later"}]})[0]
    urgent = create_generation_task(nightly, task_type="text_generation", request_content={"prompt": "now"},
                                    requested_by="lane-test", priority=3)[0]
    opted_out = create_generation_task(nightly, task_type="text_generation", request_content={"prompt": "now"},
                                       requested_by="lane-test", priority=0, options={"batch": False})[0]
    image = create(lctx, "a cat", task_type="image_generation")
    local = create(lctx, "no batch api here", provider="local")
    assert lctx.tasks.get(low).lane == "batch"
    assert all(lctx.tasks.get(t).lane is None for t in (urgent, opted_out, image, local))
    assert set(lctx.publisher.task_ids) == {plain, urgent, opted_out, image, local}
    run_lane(lctx)
    assert lctx.tasks.get(low).result["batch"] is True


def test_results_arrive_at_half_the_price_and_a_failed_item_near_its_deadline_retries_in_realtime(lctx, fake):
    # No time for another round, however fast this one was: a round takes at least two beat
    # intervals (0.4 s) plus the last round (the fake's 0.2 s) — 1.0 s left room when it was quick.
    tight = replace(lctx, settings=replace(lctx.settings, batch_deadline_s=0.5))
    ok, flaky = create(tight, "fine"), create(tight, "flaky", provider="anthropic")
    fake.batch = BatchBehaviour(delay_s=0.2, fail={flaky: (503, "overloaded right now")})
    run_lane(tight)
    done = lctx.tasks.get(ok)
    usage = done.result["usage"]
    realtime = estimate_cost(lctx.settings.prices, model="gpt-4o-mini", provider="openai",
                             input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"])
    assert done.result["batch"] is True and done.result["batch_id"].startswith("batch_")
    assert done.cost == pytest.approx(realtime / 2, abs=1e-8) and done.cost > 0  # costs are kept to 8 places
    retried = lctx.tasks.get(flaky)
    assert (retried.status, retried.lane, retried.error["message"]) == ("retrying", None, "overloaded right now")
    assert lctx.publisher.task_ids == [flaky]  # a realtime retry: a worker message, not the lane
    assert process_task(lctx, flaky, worker_id="w@test") == "succeeded"
    final = lctx.tasks.get(flaky)
    assert "batch" not in final.result and final.result["provider"] == "anthropic" and final.attempts == 2
    kinds = [e["type"] for e in events_of(lctx, flaky)]
    assert kinds == ["task.created", "task.batched", "task.started", "task.retrying", "task.started",
                     "task.succeeded"]


@pytest.fixture
def restore_order(lctx):
    yield
    lctx.providers.set_order(["openai", "anthropic", "local"])
    lctx.router.invalidate()


def test_switching_provider_moves_the_lane_tasks_waiting_for_it(lctx, restore_order):
    """SwitchProvider re-pins what is pinned to `from`; lane tasks waiting for `from`'s batches
    follow it: pinned ones re-pinned into `to`'s group, unpinned ones to where the new order
    puts them. Nothing goes out in a batch of the provider switched away from."""
    pinned = create(lctx, "pinned to openai")
    unpinned = create(lctx, "whoever is first", provider=None)
    assert {lctx.tasks.get(t).lane_group for t in (pinned, unpinned)} == {"openai|gpt-4o-mini"}
    out = switch_provider(lctx, "openai", "anthropic", "openai is degraded")
    assert out["repinned"] >= 1 and out["regrouped"] >= 1
    moved = {t: lctx.tasks.get(t) for t in (pinned, unpinned)}
    assert all(r.lane == "batch" and r.lane_group.startswith("anthropic|") for r in moved.values())
    assert moved[pinned].options.provider == "anthropic" and moved[unpinned].options.provider is None
    assert not {pinned, unpinned} & set(lctx.lane.waiting("openai|gpt-4o-mini", limit=1000))
    assert {pinned, unpinned} <= set(lctx.lane.waiting(moved[pinned].lane_group, limit=1000))
    assert lctx.publisher.task_ids == []  # still in the lane, no worker message
    run_lane(lctx)
    done = [lctx.tasks.get(t) for t in (pinned, unpinned)]
    assert [(r.status, r.provider, r.result["batch"]) for r in done] == [("succeeded", "anthropic", True)] * 2


def test_switching_to_a_provider_without_a_batch_api_sends_the_waiting_lane_tasks_to_workers(lctx, restore_order):
    pinned = create(lctx, "pinned to openai")
    unpinned = create(lctx, "whoever is first", provider=None)
    held = create(lctx, "already in a batch being prepared")
    lctx.tasks.set_fields(held, batch_ref="lane-batch-being-sent")  # what TAKE marks: that batch owns it
    out = switch_provider(lctx, "openai", "local", "no more batches")
    assert out["repinned"] >= 1 and out["regrouped"] >= 1
    left = {t: lctx.tasks.get(t) for t in (pinned, unpinned)}
    assert all(r.status == "queued" and r.lane is None and r.lane_group is None for r in left.values())
    assert left[pinned].options.provider == "local" and left[unpinned].options.provider is None
    assert set(lctx.publisher.task_ids) == {pinned, unpinned}  # each to a worker, once
    kept = lctx.tasks.get(held)
    assert (kept.lane, kept.lane_group, kept.options.provider) == ("batch", "openai|gpt-4o-mini", "openai")
    for task_id in (pinned, unpinned):
        assert process_task(lctx, task_id, worker_id="w@test") == "succeeded"
    assert {lctx.tasks.get(t).provider for t in (pinned, unpinned)} == {"local"}
    lctx.tasks.set_fields(held, batch_ref="")  # let this module's later lane runs take it
    lctx.providers.set_order(["openai", "anthropic", "local"])
    lctx.router.invalidate()
    run_lane(lctx)


def test_the_pending_sweep_leaves_lane_tasks_to_the_lane_and_readmits_a_lost_one(lctx):
    waiting, lost = create(lctx, "waiting"), create(lctx, "lost on its way in")
    lctx.lane.drop_waiting("openai|gpt-4o-mini", [lost])  # as if the admitting process died after the create
    sweeper = replace(lctx, settings=replace(lctx.settings, pending_grace_s=0.0))
    time.sleep(0.01)
    process_pending_tasks(sweeper)
    assert not {waiting, lost} & set(lctx.publisher.task_ids)
    assert set(lctx.lane.waiting("openai|gpt-4o-mini", limit=1000)) >= {waiting, lost}
    run_lane(lctx)
    assert {lctx.tasks.get(t).status for t in (waiting, lost)} == {"succeeded"}


def test_cancelling_every_task_of_a_submitted_batch_cancels_it_at_the_provider(lctx, fake):
    fake.batch = BatchBehaviour(delay_s=30.0)
    ids = [create(lctx, f"never mind {i}", provider="anthropic") for i in range(2)]
    collect_batches(lctx)
    assert {lctx.tasks.get(t).status for t in ids} == {"running"}
    [live] = lctx.lane.get_many(lctx.lane.live())
    assert [e["type"] for e in events_of(lctx, ids[0])][-2:] == ["task.batched", "task.started"]
    assert events_of(lctx, ids[0])[-2]["batch_id"] == live.provider_id
    cancel_task(lctx, ids[0], "not needed")
    poll_batches(lctx)
    assert not lctx.lane.get(live.id).cancel_requested  # one task still wants its answer
    cancel_task(lctx, ids[1], "not needed either")
    run_lane(lctx)
    record = next(r for r in fake.batch_records if r.id == live.provider_id)
    assert record.status == "ended" and set(record.outcomes.values()) == {"canceled"}
    ended = lctx.lane.get(live.id)
    assert ended.cancel_requested and ended.counts["discarded"] == 2
    assert all(lctx.tasks.get(t).status == "cancelled" and lctx.tasks.get(t).result is None for t in ids)


def test_a_poll_reaches_a_batch_behind_a_thousand_older_live_ones(lctx):
    task = create(lctx, "behind the crowd")
    collect_batches(lctx)
    ghosts = {f"ghost-{i}": 0 for i in range(1000)}  # older than any real batch (only the first 1,000 were polled)
    lctx.tasks.r.zadd(lctx.lane.keys.lane_live, ghosts)
    try:
        end = time.monotonic() + 15
        while lctx.tasks.get(task).status != "succeeded":
            assert time.monotonic() < end, lctx.tasks.get(task).status
            time.sleep(0.1)
            poll_batches(lctx)
    finally:
        lctx.tasks.r.zrem(lctx.lane.keys.lane_live, *ghosts)


def test_operators_list_batches_newest_first_with_counts(lctx):
    create(lctx, "listed")
    run_lane(lctx)
    web = create_app({"AII_CONTEXT": lctx, "TESTING": True}).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = web.get("/v1/batches?limit=2", headers=auth).json
    assert len(page["items"]) == 2 and page["next_cursor"]
    newest = page["items"][0]
    assert newest["status"] == "ended" and newest["provider"] == "openai" and newest["id"].startswith("batch_")
    assert newest["counts"]["total"] == newest["counts"]["succeeded"] == 1 and newest["age_s"] >= 0
    rest = web.get(f"/v1/batches?limit=200&cursor={page['next_cursor']}", headers=auth).json
    every = page["items"] + rest["items"]
    assert rest["next_cursor"] is None and len({b["lane_id"] for b in every}) == len(every)
    assert [b["created_at"] for b in every] == sorted((b["created_at"] for b in every), reverse=True)
    only = web.get("/v1/batches?provider=anthropic&status=ended", headers=auth).json["items"]
    assert only and {b["provider"] for b in only} == {"anthropic"}
    assert web.get("/v1/batches?status=sideways", headers=auth).status_code == 422
    wait_for(lambda: b"aii_batches_in_flight" in web.get("/metrics").data, timeout_s=2)
    wait_for(lambda: b'aii_batch_saved_cost_total{provider="openai"}' in web.get("/metrics").data, timeout_s=5,
             what="the buffered saved-cost counter")
