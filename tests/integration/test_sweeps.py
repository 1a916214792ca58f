"""The beat sweeps against a real Redis, with records placed in the states they handle and
an injected clock instead of minutes of sleeping."""

from __future__ import annotations

import dataclasses
import json
import time

from aiintegration.commands import sweeps
from aiintegration.commands.create import create_generation_task
from aiintegration.commands.failures import handle_failure
from aiintegration.errors import InvalidRequest, ProviderUnavailable
from aiintegration.store.broker_queue import broker_lists
from tests.support import RecordingPublisher, events_of


def new_task(ctx, **options):
    task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "sweep"},
                                        requested_by="sweeper", options=options or None)
    return task_id


def at(ctx, offset_s):
    return dataclasses.replace(ctx, clock=lambda: time.time() + offset_s)


def test_cleanup_times_out_a_task_running_past_its_deadline_and_retries_it(ctx):
    task_id = new_task(ctx, timeout_s=60)
    assert ctx.tasks.claim(task_id, worker_id="ghost", lease_s=3600, max_processing_time=300).claimed
    assert sweeps.cleanup_timed_out_tasks(ctx)["examined"] == 0  # not yet due
    result = sweeps.cleanup_timed_out_tasks(at(ctx, 120))
    assert result["retrying"] == 1
    record = ctx.tasks.get(task_id)
    assert record.status == "retrying" and record.error["class"] == "TaskTimedOut"
    assert [e["type"] for e in events_of(ctx, task_id)][-2:] == ["task.timed_out", "task.retrying"]


def test_cleanup_recovers_a_task_whose_worker_died_before_its_deadline(ctx):
    task_id = new_task(ctx)
    ctx.tasks.claim(task_id, worker_id="dead", lease_s=-10, max_processing_time=300)
    sweeps.cleanup_timed_out_tasks(ctx)
    record = ctx.tasks.get(task_id)
    assert record.status == "retrying" and "stopped responding" in record.error["message"]


def test_cleanup_dead_letters_a_timed_out_task_that_must_not_retry(ctx):
    task_id = new_task(ctx, timeout_s=10, retry_on_timeout=False)
    ctx.tasks.claim(task_id, worker_id="ghost", lease_s=3600, max_processing_time=300)
    sweeps.cleanup_timed_out_tasks(at(ctx, 60))
    assert ctx.tasks.get(task_id).status == "dead_lettered"
    entry = json.loads(ctx.tasks.r.hget("aii:dlq", task_id))
    assert entry["reason"] == "timed_out" and entry["review_state"] == "pending"


def test_pending_sweep_re_enqueues_a_queued_task_that_has_no_broker_message(ctx):
    lost = new_task(dataclasses.replace(ctx, publisher=RecordingPublisher(fail=True)))
    ctx.tasks.r.delete(*broker_lists())
    sent = RecordingPublisher()
    result = sweeps.process_pending_tasks(dataclasses.replace(at(ctx, 600), publisher=sent))
    assert lost in sent.task_ids and result["requeued"] >= 1
    assert result["counts"]["queued"] >= 1


def test_pending_sweep_leaves_queued_tasks_alone_when_the_broker_holds_their_messages(ctx):
    ctx.tasks.r.delete(*broker_lists())
    for _ in range(3):
        new_task(ctx)
    queued = ctx.tasks.count("queued")
    ctx.tasks.r.rpush(broker_lists()[4], *["m"] * queued)  # as many messages as queued records
    sent = RecordingPublisher()
    sweeps.process_pending_tasks(dataclasses.replace(at(ctx, 600), publisher=sent))
    assert sent.task_ids == []
    ctx.tasks.r.delete(broker_lists()[4])


def dead_lettered(ctx, exc):
    task_id = new_task(ctx, max_retries=0)
    claim = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300)
    handle_failure(ctx, claim.record, exc, run_id=claim.record.run_id)
    assert ctx.tasks.get(task_id).status == "dead_lettered"
    return task_id


def test_dlq_sweep_auto_retries_transient_failures_at_most_twice_and_flags_the_rest(ctx):
    transient = dead_lettered(ctx, ProviderUnavailable("503 from upstream", provider="local"))
    permanent = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    result = sweeps.process_dead_letter_queue(ctx)
    assert result["auto_retried"] >= 1 and result["manual_review"] >= 1
    assert ctx.tasks.get(transient).status == "queued"
    assert json.loads(ctx.tasks.r.hget("aii:dlq", permanent))["review_state"] == "manual_review"
    for _ in range(2):  # fail again after each automatic retry
        claim = ctx.tasks.claim(transient, worker_id="w", lease_s=30, max_processing_time=300)
        handle_failure(ctx, claim.record, ProviderUnavailable("503 again", provider="local"),
                       run_id=claim.record.run_id)
        sweeps.process_dead_letter_queue(ctx)
    assert ctx.tasks.get(transient).status == "dead_lettered"
    entry = json.loads(ctx.tasks.r.hget("aii:dlq", transient))
    assert entry["review_state"] == "manual_review" and entry["auto_retries"] == 2


def test_a_sweep_does_nothing_while_another_holds_its_lock(ctx):
    with ctx.sweeps.lock("cleanup") as got:
        assert got
        assert sweeps.cleanup_timed_out_tasks(ctx) == {"skipped": "another sweep holds the lock"}


def test_records_past_retention_leave_every_index_and_the_sweep_touches_only_those(ctx):
    from aiintegration.commands.lifecycle import cancel_task

    keep, gone = new_task(ctx), new_task(ctx)
    cancel_task(ctx, gone, "expire me")
    assert ctx.tasks.r.ttl(ctx.tasks.keys.task(gone)) > 0  # the hash expires by itself
    later = at(ctx, ctx.settings.retention_s + 10)
    assert sweeps.cleanup_timed_out_tasks(later)["expired"] >= 1
    for index in ("aii:idx:tasks", "aii:idx:status:cancelled", "aii:idx:by:sweeper"):
        assert ctx.tasks.r.zscore(index, gone) is None, index
    assert ctx.tasks.r.zscore("aii:idx:tasks", keep) is not None
    assert ctx.tasks.r.zcard("aii:idx:expiry") == 0 or all(
        not m.startswith(gone) for m in ctx.tasks.r.zrange("aii:idx:expiry", 0, -1))
