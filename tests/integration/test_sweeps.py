"""The beat sweeps against a real Redis, with records placed in the states they handle and
an injected clock instead of minutes of sleeping."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

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


def test_a_running_attempt_is_indexed_once_at_the_earlier_of_its_lease_end_and_deadline(ctx):
    due = "aii:idx:due"
    task_id = new_task(ctx, timeout_s=60)
    before = time.time()
    run_id = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300).record.run_id
    assert before + 30 <= ctx.tasks.r.zscore(due, task_id) <= time.time() + 30  # the lease ends first
    ctx.tasks.heartbeat([(task_id, run_id)], lease_until=before + 1000)
    assert ctx.tasks.r.zscore(due, task_id) == ctx.tasks.get(task_id).deadline_at  # now the deadline does
    ctx.tasks.r.zrem(due, task_id)  # as if the sweep dropped it in a race with a new claim
    ctx.tasks.heartbeat([(task_id, run_id)], lease_until=before + 40)
    assert ctx.tasks.r.zscore(due, task_id) == before + 40  # the next beat puts it back
    assert ctx.tasks.transition(task_id, to="succeeded", run_id=run_id, fields={"result": {"text": "x"}})[0]
    assert ctx.tasks.r.zscore(due, task_id) is None


def test_cleanup_settles_entries_of_the_older_two_indexes_and_stale_ones(ctx):
    """Records indexed by earlier code (by deadline and by lease end, `LEGACY_DUE`) and an
    entry older than its record's lease: the dead one times out, the healthy ones are
    watched again at their due time, the finished one leaves, the old indexes empty."""
    r, now = ctx.tasks.r, time.time()
    dead, healthy, finished, stale = (new_task(ctx, timeout_s=600) for _ in range(4))
    for task_id in (dead, healthy, finished, stale):
        ctx.tasks.claim(task_id, worker_id="old", lease_s=-10 if task_id == dead else 60, max_processing_time=600)
    r.zrem("aii:idx:due", dead, healthy, finished)  # claimed by the earlier code: only in its indexes
    for task_id in (dead, healthy, finished):
        r.zadd("aii:idx:lease", {task_id: now - 60})
        r.zadd("aii:idx:deadline", {task_id: now + 600})
    run_id = ctx.tasks.get(finished).run_id
    r.zrem("aii:idx:due", finished)
    ctx.tasks.transition(finished, to="succeeded", run_id=run_id, fields={"result": {"text": "x"}})
    r.zadd("aii:idx:due", {stale: now - 60})  # written before its worker's last heartbeat
    result = sweeps.cleanup_timed_out_tasks(ctx)
    assert result["examined"] == 4 and result["retrying"] == 1
    assert ctx.tasks.get(dead).status == "retrying" and ctx.tasks.get(healthy).status == "running"
    assert ctx.tasks.get(stale).status == "running"
    for task_id in (healthy, stale):
        record = ctx.tasks.get(task_id)
        assert r.zscore("aii:idx:due", task_id) == min(record.lease_until, record.deadline_at)
    assert r.zscore("aii:idx:due", dead) is None and r.zscore("aii:idx:due", finished) is None
    assert r.zcard("aii:idx:lease") == 0 and r.zcard("aii:idx:deadline") == 0
    assert sweeps.cleanup_timed_out_tasks(ctx)["examined"] == 0


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


def upkeep_of(ctx, task_id):
    return [m for m in ctx.tasks.r.zrange("aii:idx:upkeep", 0, -1) if m.startswith(f"{task_id}|")]


def test_records_past_retention_are_deleted_with_every_index_entry_and_the_sweep_touches_only_those(ctx):
    from aiintegration.commands.lifecycle import cancel_task

    keep, gone = new_task(ctx), new_task(ctx)
    cancel_task(ctx, gone, "expire me")
    record, stream = ctx.tasks.keys.task(gone), ctx.tasks.keys.task_stream(gone)
    assert ctx.tasks.r.ttl(record) == -1 and upkeep_of(ctx, gone)  # kept: the sweep deletes it, no Redis TTL
    assert sweeps.cleanup_timed_out_tasks(at(ctx, ctx.settings.retention_s - 10))["expired"] == 0
    assert ctx.tasks.get(gone) is not None  # folded in, still kept
    assert sweeps.cleanup_timed_out_tasks(at(ctx, ctx.settings.retention_s + 10))["expired"] >= 1
    assert not ctx.tasks.r.exists(record, stream)
    for index in ("aii:idx:tasks", "aii:idx:status:cancelled", "aii:idx:by:sweeper", "aii:idx:tenant:default"):
        assert ctx.tasks.r.zscore(index, gone) is None, index
    assert ctx.tasks.r.zscore("aii:idx:tasks", keep) is not None and ctx.tasks.get(keep) is not None
    assert upkeep_of(ctx, gone) == []


def test_a_discarded_dlq_entry_retried_before_its_retention_ends_stays(ctx):
    from aiintegration.commands.dlq import discard
    from aiintegration.commands.lifecycle import retry_task

    task_id = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    discard(ctx, task_id)
    assert upkeep_of(ctx, task_id)
    retry_task(ctx, task_id, "fixed the prompt")  # kept for good again
    assert ctx.tasks.get(task_id).status == "queued"
    later = at(ctx, ctx.settings.retention_s + 10)
    sweeps.cleanup_timed_out_tasks(later)
    assert ctx.tasks.get(task_id).status == "queued"  # not deleted by the entry it outgrew
    assert ctx.tasks.r.zscore("aii:idx:tasks", task_id) is not None  # and still listed
    assert ctx.tasks.r.zscore("aii:idx:status:queued", task_id) is not None
    assert upkeep_of(ctx, task_id) == []


def test_the_sweep_keeps_up_with_many_records_ending_their_retention_in_one_run(ctx):
    from aiintegration.commands.lifecycle import cancel_task

    ids = [new_task(ctx) for _ in range(1200)]  # more than one batch of visits
    for task_id in ids:
        cancel_task(ctx, task_id, "bulk")
    first = sweeps.cleanup_timed_out_tasks(at(ctx, ctx.settings.events_compact_after_s + 10))
    assert first["compacted"] >= len(ids) and first["expired"] == 0
    assert sweeps.cleanup_timed_out_tasks(at(ctx, ctx.settings.retention_s + 10))["expired"] >= len(ids)
    assert not any(ctx.tasks.r.exists(ctx.tasks.keys.task(i)) for i in ids)
    assert ctx.tasks.r.zcard("aii:idx:upkeep") == 0


def test_the_sweep_drains_the_indexes_earlier_versions_kept(ctx):
    """Before `idx:upkeep`: a kept record had a Redis TTL, `idx:expiry` (2|id|status|tenant|by,
    or id|status|by before tenants) said when to drop its ids, `idx:compact` when to fold."""
    old, older = new_task(ctx), new_task(ctx)
    folded = new_task(ctx)
    for task_id in (old, older, folded):
        ctx.tasks.transition(task_id, to="cancelled", allowed_from=["queued"], events=[("task.cancelled", {})])
        ctx.tasks.r.zrem("aii:idx:upkeep", *upkeep_of(ctx, task_id))
        ctx.tasks.r.hdel(ctx.tasks.keys.task(task_id), "expires_at")
    now = time.time()
    ctx.tasks.r.delete(ctx.tasks.keys.task(old), ctx.tasks.keys.task(older))  # expired by their TTL
    ctx.tasks.r.zadd("aii:idx:expiry", {f"2|{old}|cancelled|default|sweeper": now - 1,
                                        f"{older}|cancelled|sweeper": now - 1})
    ctx.tasks.r.zadd("aii:idx:compact", {folded: now - ctx.settings.events_compact_after_s - 1})
    result = sweeps.cleanup_timed_out_tasks(ctx)
    assert result["expired"] >= 2 and result["compacted"] >= 1
    for task_id in (old, older):
        assert ctx.tasks.r.zscore("aii:idx:tasks", task_id) is None
        assert ctx.tasks.r.zscore("aii:idx:status:cancelled", task_id) is None
    assert ctx.tasks.r.hexists(ctx.tasks.keys.task(folded), "events")
    assert ctx.tasks.r.zcard("aii:idx:expiry") == 0 and ctx.tasks.r.zcard("aii:idx:compact") == 0


# Sweeps that work through everything due, not one page a run. Each test starts from an empty
# database: the pages they cross are made of their own records.


def retrying_task(ctx):
    task_id = new_task(ctx)
    claim = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300)
    handle_failure(ctx, claim.record, ProviderUnavailable("503", provider="local"), run_id=claim.record.run_id)
    assert ctx.tasks.get(task_id).status == "retrying"
    return task_id


def test_the_cleanup_sweep_recovers_every_attempt_of_a_vanished_host_in_one_run(ctx):
    ctx.tasks.r.flushdb()
    ids = [new_task(ctx) for _ in range(120)]
    for task_id in ids:
        ctx.tasks.claim(task_id, worker_id="vanished", lease_s=-10, max_processing_time=300)
    result = sweeps.cleanup_timed_out_tasks(ctx, limit=50)
    assert result["examined"] == 120 and result["retrying"] == 120
    assert {r.status for r in ctx.tasks.get_many(ids)} == {"retrying"}


def test_the_dlq_sweep_reaches_new_entries_behind_a_page_of_entries_waiting_for_an_operator(ctx):
    ctx.tasks.r.flushdb()
    for _ in range(3):  # the oldest: already marked for an operator, and they stay in the queue
        dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    assert sweeps.process_dead_letter_queue(ctx)["manual_review"] == 3
    newer = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    result = sweeps.process_dead_letter_queue(ctx, limit=2)
    assert result["manual_review"] == 1
    assert json.loads(ctx.tasks.r.hget("aii:dlq", newer))["review_state"] == "manual_review"


def test_the_dlq_retention_drops_everything_past_it_in_one_run(ctx):
    from aiintegration.commands.dlq import drop_old_entries

    ctx.tasks.r.flushdb()
    ids = [dead_lettered(ctx, InvalidRequest("bad prompt", provider="local")) for _ in range(5)]
    assert drop_old_entries(dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, dlq_retention_s=0)),
                            limit=2) == 5
    assert ctx.dlq.get_many(ids) == [None] * 5


def test_deferred_retries_do_not_hide_a_lost_retry_from_the_pending_sweep(ctx):
    ctx.tasks.r.flushdb()
    deferred = [retrying_task(ctx) for _ in range(3)]  # due first by their retry time
    lost = retrying_task(ctx)
    for task_id in deferred:
        ctx.tasks.defer(task_id, until=time.time() + 3600)  # throttled far back in a quota line
    sent = RecordingPublisher()
    sweeps.process_pending_tasks(dataclasses.replace(at(ctx, 600), publisher=sent), limit=3)
    assert sent.task_ids == [lost]


def test_the_pending_sweep_sends_no_more_messages_than_are_missing(ctx):
    ctx.tasks.r.flushdb()
    unsent = dataclasses.replace(ctx, publisher=RecordingPublisher())
    ids = [new_task(unsent) for _ in range(5)]  # none has a message
    for task_id in (ids[-1], ids[-2]):  # the newest sleep in Redis
        ctx.tasks.defer(task_id, until=time.time() + 3600)
    ctx.tasks.r.rpush(broker_lists()[4], "m", "m")  # two of the three others have theirs
    sent = RecordingPublisher()
    result = sweeps.process_pending_tasks(dataclasses.replace(at(ctx, 600), publisher=sent))
    assert len(sent.task_ids) == 1 and result["requeued"] == 1
    ctx.tasks.r.delete(broker_lists()[4])


def test_a_queued_task_whose_message_a_worker_holds_is_not_sent_again(ctx):
    """A countdown message sits in kombu's `unacked` hash (reserved beyond the prefetch): it
    covers its queued record, however many such messages there are (the hash is read in pages)."""
    import base64

    from aiintegration.store.broker_queue import PROCESS_TASK, UNACKED_KEY

    ctx.tasks.r.flushdb()
    unsent = dataclasses.replace(ctx, publisher=RecordingPublisher())
    held = [new_task(unsent) for _ in range(1500)]
    lost = new_task(unsent)

    def message(task_id):
        body = base64.b64encode(json.dumps([[], {"task_id": task_id}, {}]).encode()).decode()
        return json.dumps([{"headers": {"task": PROCESS_TASK}, "body": body,
                            "properties": {"body_encoding": "base64"}}, "", "celery"])

    ctx.tasks.r.hset(UNACKED_KEY, mapping={f"tag-{i}": message(t) for i, t in enumerate(held)})
    sent = RecordingPublisher()
    result = sweeps.process_pending_tasks(dataclasses.replace(at(ctx, 600), publisher=sent))
    assert sent.task_ids == [lost] and result["requeued"] == 1
    ctx.tasks.r.delete(UNACKED_KEY)


def test_a_review_of_an_entry_replayed_meanwhile_does_not_bring_it_back(ctx):
    from aiintegration.commands import dlq
    from aiintegration.errors import NotFound

    task_id = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    entry = ctx.dlq.get(task_id)
    dlq.replay(ctx, task_id, "fixed")  # the entry leaves the DLQ
    assert ctx.dlq.update(task_id, lambda _: {**entry, "review_state": "manual_review"}) is None  # racing the replay
    assert ctx.dlq.get(task_id) is None
    with pytest.raises(NotFound):
        dlq.review(ctx, task_id, "too late")


def test_a_task_ending_after_its_budget_window_ended_leaves_no_reservation_behind(ctx):
    from aiintegration.domain.submission import validate_submission

    sub = validate_submission(task_type="text_generation", request_content={"prompt": "x"}, requested_by="svc",
                              default_timeout_s=300, max_timeout_s=3600, default_max_retries=3)
    sub = dataclasses.replace(sub, tenant="late", budget=(0.5, 100, "2026-11-29", "2026-11"))
    task_id, _, _ = ctx.tasks.create(sub)
    keys = [ctx.tasks.keys.budget_reserved("late", w, k) for w, k in (("day", "2026-11-29"), ("month", "2026-11"))]
    ctx.tasks.r.hset(keys[1], mapping={"cost": 0.5, "tokens": 100})  # the month still holds it; the day ended
    assert ctx.tasks.transition(task_id, to="cancelled", allowed_from=["queued"], events=[("task.cancelled", {})])[0]
    assert not ctx.tasks.r.exists(keys[0])  # not made again, negative and without a TTL
    assert float(ctx.tasks.r.hget(keys[1], "cost")) == 0


def test_a_retry_throttled_by_a_quota_is_not_due_for_the_pending_sweep_before_its_message(ctx):
    from aiintegration.commands.quotas import Refusal, throttle
    from aiintegration.store.quotas import Admission

    ctx.tasks.r.flushdb()
    task_id = retrying_task(ctx)
    sent = RecordingPublisher()
    refusal = Refusal("local", "default", Admission(admitted=False, reservation="", wait_s=20.0, reason="requests"))
    assert throttle(dataclasses.replace(ctx, publisher=sent), ctx.tasks.get(task_id), refusal) == "throttled"
    assert sent.task_ids == [task_id]  # its message comes back in 20 s
    due_at = ctx.tasks.r.zscore("aii:idx:retry", task_id)
    assert due_at == pytest.approx(time.time() + 20, abs=5)  # not at its first retry time: no second message
    swept = RecordingPublisher()
    sweeps.process_pending_tasks(dataclasses.replace(at(ctx, ctx.settings.pending_grace_s + 5), publisher=swept))
    assert swept.task_ids == []


def test_two_notes_added_to_a_dlq_entry_at_once_both_stay(ctx):
    from aiintegration.commands import dlq

    task_id = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    calls = []

    def add_mine(entry):
        calls.append(1)
        if len(calls) == 1:  # another operator's note lands between this read and this write
            dlq.review(ctx, task_id, "theirs")
        return {**entry, "notes": [*entry.get("notes", []), {"note": "mine"}]}

    ctx.dlq.update(task_id, add_mine)
    assert [n["note"] for n in ctx.dlq.get(task_id)["notes"]] == ["theirs", "mine"] and len(calls) == 2


def test_a_discarded_entry_retried_later_and_dead_lettered_again_is_kept(ctx):
    from aiintegration.commands.dlq import discard
    from aiintegration.commands.lifecycle import retry_task

    task_id = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    discard(ctx, task_id)  # kept for the retention period, then deleted
    retry_task(ctx, task_id, "try once more", delay=30)  # retrying: kept for good again
    claim = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300, now=time.time() + 60)
    handle_failure(ctx, claim.record, InvalidRequest("bad again", provider="local"), run_id=claim.record.run_id)
    assert ctx.tasks.get(task_id).status == "dead_lettered" and ctx.dlq.get(task_id) is not None
    sweeps.cleanup_timed_out_tasks(at(ctx, ctx.settings.retention_s + 10))
    assert ctx.tasks.get(task_id) is not None  # its new DLQ entry still has its record
    assert not ctx.tasks.start_retention(task_id, status="queued")  # retention only for the status it expects


def test_the_dlq_sweep_carries_on_past_an_entry_whose_record_is_gone(ctx):
    ctx.tasks.r.flushdb()
    gone = dead_lettered(ctx, ProviderUnavailable("503", provider="local"))
    later = dead_lettered(ctx, InvalidRequest("bad prompt", provider="local"))
    ctx.tasks.r.delete(ctx.tasks.keys.task(gone))
    result = sweeps.process_dead_letter_queue(ctx)
    assert result["manual_review"] == 1 and ctx.dlq.get(gone) is None
    assert ctx.dlq.get(later)["review_state"] == "manual_review"
