"""Provider quotas through real workers and the real openai SDK against a fake provider that
enforces an account limit like the real ones (a 2-second "minute" here): work above the limit
is scheduled, not failed; the provider's headers alone teach the limit; two worker processes
share one bucket; urgent work overtakes a throttled backlog; a tenant's trickle is not starved
by another's burst."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from aiintegration.commands.create import create_generation_task
from aiintegration.commands.lifecycle import cancel_task
from aiintegration.commands.process import process_task
from aiintegration.commands.routing import REFRESH_S
from aiintegration.commands.sweeps import process_pending_tasks, release_deferred_tasks
from aiintegration.domain.auth import Caller, Role
from aiintegration.domain.providers import ProviderConfig
from tests.fake_limits import AccountLimits
from tests.fake_provider import Behaviour, FakeProvider
from tests.support import RecordingPublisher, Worker, events_of, wait_for, wait_status

KEY = "sk-test-LEAKCHECK-quotas-0123456789"
WINDOW = 2.0
ENV = {"AII_QUOTA_WINDOW_S": str(WINDOW), "AII_QUOTA_MAX_COUNTDOWN_S": "1"}
TEXT = {"prompt": "a short prompt", "max_tokens": 20}


@pytest.fixture(scope="module")
def fake(ctx):
    with FakeProvider() as server:
        server.default = Behaviour(delay_s=0.05, words=5)
        ctx.providers.set_order(["openai"])
        yield server


@pytest.fixture(scope="module")
def worker(db, fake):
    with Worker(db, concurrency=16, env=ENV) as one:
        yield one


def configure(ctx, fake, limits=None):
    config = ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=10,
                            limits=limits or {})
    if ctx.providers.get("openai") != config:
        ctx.providers.put(config)
        # Worker processes re-read provider configs within REFRESH_S of a change: until then one
        # still on a config without limits sends without asking the bucket (the README says so).
        time.sleep(REFRESH_S + 0.2)
    ctx.tasks.r.delete(*ctx.tasks.r.keys("aii:quota:*") or ["none"])
    fake.limiter.__init__()  # a fresh account window and counters
    fake.limits = AccountLimits(rpm=10, window_s=WINDOW)


def submit(ctx, n, *, priority=5, tenant="default", requested_by="quota-test"):
    caller = Caller(tenant, Role.CLIENT)
    return [create_generation_task(ctx, caller=caller, task_type="text_generation", request_content=TEXT,
                                   requested_by=requested_by, priority=priority,
                                   options={"max_retries": 5})[0] for _ in range(n)]


def finish(ctx, ids, timeout_s=60):
    return [wait_status(ctx, task_id, ["succeeded"], timeout_s=timeout_s) for task_id in ids]


def test_work_above_the_configured_limit_is_scheduled_not_failed(ctx, worker, fake):
    configure(ctx, fake, {"rpm": 10})
    ids = submit(ctx, 30)
    records = finish(ctx, ids)
    assert all(r.attempts == 1 for r in records), [(r.attempts, [e["type"] + ":" + str(e.get("reason") or e.get("error", {}).get("code") if isinstance(e.get("error"), dict) else e.get("reason")) for e in events_of(ctx, r.id)]) for r in records if r.attempts != 1][:3]  # a wait for quota is not an attempt
    assert fake.limiter.rejected == 0  # no call ran into the provider's limit (goal: <= 1 %)
    assert fake.limiter.max_in_window(WINDOW) <= 10
    throttled = [e for task_id in ids for e in events_of(ctx, task_id) if e["type"] == "task.throttled"]
    assert throttled and {e["provider"] for e in throttled} == {"openai"}
    assert all(e["reason"].startswith(("requests", "paused")) and e["until"].endswith("Z") for e in throttled)
    first = next(e for e in events_of(ctx, ids[-1]))
    assert first["type"] == "task.created"

    def waited() -> float:
        (histogram,) = [h for h in ctx.metrics.read().histograms.get("aii_ratelimit_wait_seconds", [])
                        if h.labels == {"provider": "openai"}] or [None]
        return histogram.buckets[-1][1] if histogram else 0
    # one per attempt that waited, once the worker's buffered metrics are written
    wait_for(lambda: waited() >= len({e["task_id"] for e in throttled}), timeout_s=5, what="the wait histogram")


def test_the_providers_headers_alone_teach_the_limit(ctx, worker, fake):
    configure(ctx, fake)  # nothing configured: the first answers' x-ratelimit-* headers say 10 per window
    finish(ctx, submit(ctx, 2))  # the first window: learn
    fake.limiter.rejected = 0
    records = finish(ctx, submit(ctx, 30))
    assert all(r.status == "succeeded" for r in records)
    assert fake.limiter.rejected <= 1  # under 5 % of 30 after the first window
    assert ctx.quotas.state("openai", "*", ctx.providers.get("openai").rate_limits.default).limits.rpm == 10


def test_two_worker_processes_share_one_bucket(ctx, db, worker, fake):
    configure(ctx, fake, {"rpm": 10})
    with Worker(db, concurrency=8, env=ENV, name="b"):  # and the module's worker
        finish(ctx, submit(ctx, 30))
    assert fake.limiter.rejected == 0 and fake.limiter.max_in_window(WINDOW) <= 10


def test_an_urgent_task_overtakes_a_throttled_backlog(ctx, worker, fake):
    configure(ctx, fake, {"rpm": 4})
    backlog = submit(ctx, 16, priority=1)
    time.sleep(0.6)  # the backlog is waiting for the bucket
    urgent = submit(ctx, 1, priority=9)[0]
    records = finish(ctx, [*backlog, urgent])
    starts = sorted(r.started_at for r in records[:-1])
    later = sum(1 for s in starts if s > records[-1].started_at)
    assert later >= 8, f"the urgent task started after {16 - later} of the 16 backlog tasks"


def test_a_tenants_trickle_finishes_while_anothers_burst_waits(ctx, worker, fake):
    configure(ctx, fake, {"rpm": 4})
    burst = submit(ctx, 20, tenant="bulk")
    time.sleep(0.5)
    trickle = submit(ctx, 3, tenant="interactive")
    records = {r.id: r for r in finish(ctx, [*burst, *trickle])}
    last_trickle = max(records[t].finished_at for t in trickle)
    burst_after = sum(1 for t in burst if records[t].started_at > last_trickle)
    assert burst_after >= 8, f"only {burst_after} of the burst's 20 started after the trickle finished"


def test_an_unpinned_task_that_cannot_wait_goes_to_another_provider_with_room(ctx, worker, fake):
    configure(ctx, fake, {"rpm": 2})
    ctx.providers.set_order(["openai", "local"])
    try:
        caller = Caller("default", Role.CLIENT)
        ids = [create_generation_task(ctx, caller=caller, task_type="text_generation", request_content=TEXT,
                                      requested_by="impatient", options={"timeout_s": 1})[0] for _ in range(6)]
        records = finish(ctx, ids)
    finally:
        ctx.providers.set_order(["openai"])
    providers = [r.provider for r in records]
    # a 2-per-window bucket and 1 s of patience: those that would wait longer went elsewhere
    assert "openai" in providers and "local" in providers
    assert fake.limiter.rejected == 0


def test_a_cancelled_task_gives_up_its_place_in_the_wait_line_at_once(ctx, fake):
    """A throttled task holds a place in its provider's wait line until it comes back to ask;
    cancelled (or dead-lettered) meanwhile, it must not keep that place — far back in a deep
    line that would be until its turn, with every waiter behind it held up."""
    configure(ctx, fake, {"rpm": 1})
    here = replace(ctx, publisher=RecordingPublisher())  # no worker takes these: the test runs them
    first, second = submit(here, 2)
    assert process_task(here, first, worker_id="t@test") == "succeeded"
    assert process_task(here, second, worker_id="t@test") == "throttled"
    waiting, needs = ctx.tasks.keys.quota_waiting("openai", "*"), ctx.tasks.keys.quota_needs("openai", "*")
    assert ctx.tasks.r.zscore(waiting, second) is not None and ctx.tasks.r.hget(needs, second)
    assert ctx.tasks.get(second).throttled_in == "openai|*"
    cancel_task(here, second, "not needed any more")
    assert ctx.tasks.r.zscore(waiting, second) is None and ctx.tasks.r.hget(needs, second) is None
    record = ctx.tasks.get(second)
    assert record.status == "cancelled" and record.throttled_in is None and record.throttled_at is None


def test_a_task_far_back_sleeps_in_redis_and_the_deferred_sweep_sends_it_when_due(ctx, fake):
    """Near the front a throttled task's message is an ETA message (it comes back at its turn);
    far back it sleeps in the deferred index — no broker message, nothing in a worker's memory,
    not mistaken for a lost message by the pending sweep — until the sweep sends it."""
    configure(ctx, fake, {"rpm": 1})  # a 60 s window here (the test process's settings)
    publisher = RecordingPublisher()
    here = replace(ctx, publisher=publisher, settings=replace(ctx.settings, quota_max_countdown_s=40))
    first, near, far = submit(here, 3)
    assert process_task(here, first, worker_id="t@test") == "succeeded"
    publisher.task_ids.clear()
    assert process_task(here, near, worker_id="t@test") == "throttled"  # one window away: back in 40 s, ETA
    assert process_task(here, far, worker_id="t@test") == "throttled"  # two windows: it sleeps one, deferred
    deferred = ctx.tasks.keys.index("deferred")
    assert publisher.task_ids == [near] and ctx.tasks.r.zscore(deferred, near) is None
    due = ctx.tasks.r.zscore(deferred, far)
    assert due is not None and 50 < due - time.time() < 130
    later = replace(here, clock=lambda: time.time() + 400)
    process_pending_tasks(later)  # the broker has no message for `far`: on purpose
    assert far not in publisher.task_ids
    assert release_deferred_tasks(here) == {"released": 0}  # not due yet
    assert release_deferred_tasks(replace(here, clock=lambda: due + 0.1)) == {"released": 1}
    assert publisher.task_ids.count(far) == 1 and ctx.tasks.r.zscore(deferred, far) is None
    # a deferred task that is cancelled leaves the index with its place in the line
    ctx.tasks.defer(far, until=time.time() + 1000)
    cancel_task(here, far, "no longer needed")
    assert ctx.tasks.r.zscore(deferred, far) is None
