"""What one attempt costs Redis, and the shortcuts behind it keeping their guarantees (issue 18):
an attempt whose message carries its route, on a provider with no limit to respect, is its
claim and its finish — two scripts, no read before them, no quota round trip; a limit learned
by another worker process is asked for within the recheck; a message whose route is not its
record's is planned from the record, quota included."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from aiintegration.commands.create import create_generation_task
from aiintegration.commands.process import process_task
from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.quotas import RateLimitInfo, RateLimits
from aiintegration.domain.routing import Route
from aiintegration.store import quotas as quota_scripts
from aiintegration.store import scripts
from aiintegration.store.quotas import QuotaStore
from tests.support import Monitor, events_of

SHA = {hashlib.sha1(text.encode()).hexdigest(): name for name, text in [
    ("claim", scripts.CLAIM), ("transition", scripts.TRANSITION), ("admit", quota_scripts.ADMIT),
    ("settle", quota_scripts.AFTER_CALL)]}
TEXT = Route("text_generation")


@pytest.fixture(autouse=True)
def fresh_buckets(ctx):
    """No limit learned, no pause (and this process has looked again since the last test's)."""
    ctx.tasks.r.delete(*ctx.tasks.r.keys("aii:quota:*") or ["none"])
    time.sleep(ctx.quotas.unlimited_recheck_s)


def submit(ctx, **options):
    return create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "cost"},
                                  requested_by="cost-test", options=options or None)[0]


def attempt(ctx, task_id, route):
    """One attempt in this process, every command it sends seen: (outcome, [script or command])."""
    with Monitor(ctx.tasks.r) as monitor:
        outcome = process_task(ctx, task_id, worker_id="cost/1", route=route)
    return outcome, [SHA.get(args[1], args[1]) if args[0] == "EVALSHA" else args[0] for args in monitor.sent()]


def test_an_attempt_on_a_provider_without_limits_is_its_claim_and_its_finish(ctx):
    attempt(ctx, submit(ctx), TEXT)  # the router, the breaker and the bucket looked at once
    outcome, sent = attempt(ctx, submit(ctx), TEXT)
    assert outcome == "succeeded"
    assert sent.count("claim") == 1 and sent.count("transition") == 1, sent
    assert not {"HGETALL", "admit", "settle"} & set(sent), sent
    # a message without its route (sent by an older version): the record is read first, the quota still not asked
    outcome, sent = attempt(ctx, submit(ctx), None)
    assert outcome == "succeeded" and sent.count("HGETALL") == 1
    assert not {"admit", "settle"} & set(sent), sent


def test_a_limit_learned_by_another_worker_process_is_asked_for_within_the_recheck(ctx):
    attempt(ctx, submit(ctx), TEXT)  # this process has seen the local bucket without a limit
    elsewhere = QuotaStore(ctx.tasks.r, keys=ctx.tasks.keys)  # another worker process's view
    elsewhere.learn("local", "*", RateLimits(), RateLimitInfo(limit_requests=50, remaining_requests=50,
                                                              reset_requests_s=60), now=time.time())
    time.sleep(ctx.quotas.unlimited_recheck_s)
    outcome, sent = attempt(ctx, submit(ctx), TEXT)
    assert outcome == "succeeded" and "admit" in sent and "settle" in sent, sent
    assert ctx.quotas.state("local", "*", RateLimits()).requests_left == 49  # its reservation counts


def test_a_pause_set_elsewhere_holds_attempts_here_within_the_recheck(ctx):
    attempt(ctx, submit(ctx), TEXT)
    QuotaStore(ctx.tasks.r, keys=ctx.tasks.keys).learn("local", "*", RateLimits(), pause_s=30, now=time.time())
    time.sleep(ctx.quotas.unlimited_recheck_s)
    task_id = submit(ctx)
    outcome, _ = attempt(ctx, task_id, TEXT)
    assert outcome == "throttled"
    assert ctx.tasks.get(task_id).attempts == 0 and events_of(ctx, task_id)[-1]["type"] == "task.throttled"


def test_a_message_whose_route_is_not_its_records_is_planned_from_the_record(ctx):
    name = f"metered{uuid.uuid4().hex[:6]}"
    ctx.providers.put(ProviderConfig(name, "local", limits={"rpm": 100}))
    ctx.router.invalidate()
    assert "admit" not in attempt(ctx, submit(ctx), TEXT)[1]  # unpinned, the local provider needs no quota
    task_id = submit(ctx, provider=name)  # pinned to a provider with a limit: its quota must be asked
    outcome, sent = attempt(ctx, task_id, TEXT)  # the message says: unpinned
    assert outcome == "succeeded" and "admit" in sent, sent
    record = ctx.tasks.get(task_id)
    assert record.provider == name and record.attempts == 1
    assert [e["type"] for e in events_of(ctx, task_id)] == ["task.created", "task.started", "task.succeeded"]
    assert ctx.quotas.state(name, "*", RateLimits(rpm=100)).requests_left == 99
