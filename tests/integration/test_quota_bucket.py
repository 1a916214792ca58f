"""The shared bucket's bookkeeping on a real Valkey, with explicit clocks: a settled reservation
counts from when its request was sent (not when the call ended), and what the provider counted
beyond our reservations is held once — overlapping answers replace that hold instead of
stacking it, and are compared with what we had reserved when their request was admitted."""

from __future__ import annotations

import time
import uuid
from itertools import pairwise

import pytest

from aiintegration.domain.quotas import RateLimitInfo, RateLimits
from aiintegration.store.quotas import QuotaStore
from tests.support import Monitor

LIMITS = RateLimits(rpm=10, tpm=0)
T0 = 1_700_000_000.0


@pytest.fixture()
def bucket(ctx):
    store = QuotaStore(ctx.tasks.r, keys=ctx.tasks.keys, window_s=10)
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield store, name
    ctx.tasks.r.delete(*ctx.tasks.r.keys(f"aii:quota:*{name}*") or ["none"])


def admit(store, name, now, n=1):
    out = []
    for _ in range(n):
        rid = uuid.uuid4().hex
        admission = store.admit("openai", name, LIMITS, waiter=rid, reservation=rid, priority=5, tenant="t",
                                weight=1.0, tokens=10, now=now)
        assert admission.admitted
        out.append(admission)
    return out


def left(store, name, now):
    return store.state("openai", name, LIMITS, now=now).requests_left


def seen(remaining, reset_s=5.0):
    return RateLimitInfo(limit_requests=10, remaining_requests=remaining, reset_requests_s=reset_s)


def test_a_settled_reservation_counts_from_when_its_request_was_sent(bucket):
    store, name = bucket
    (first,) = admit(store, name, T0)
    store.settle("openai", name, first.reservation, 12, sent_at=T0 + 0.1)  # the call ended 3 s later
    window = store.window_s
    assert left(store, name, T0 + 0.1 + window - 0.05) == 9
    assert left(store, name, T0 + 0.1 + window + 0.05) == 10  # not T0 + 3 + window


def test_overlapping_answers_hold_the_providers_extra_count_once(bucket):
    store, name = bucket
    admissions = admit(store, name, T0, n=4)
    assert [a.own_requests for a in admissions] == [1, 2, 3, 4]
    # Another client on the account made 3 calls: every answer says so, each from its own moment.
    for a in admissions:
        store.learn("openai", name, LIMITS, seen(10 - a.own_requests - 3), own=(a.own_requests, a.own_tokens),
                    now=T0 + 1)
    assert left(store, name, T0 + 1) == 10 - 4 - 3  # not 3 held four times
    # A later answer without the difference lifts the hold; its reset ends it anyway.
    (fifth,) = admit(store, name, T0 + 2)
    store.learn("openai", name, LIMITS, seen(10 - 5), own=(fifth.own_requests, fifth.own_tokens), now=T0 + 2)
    assert left(store, name, T0 + 2) == 5


def test_requests_that_left_our_window_during_a_call_are_not_held_as_the_providers(bucket):
    store, name = bucket
    window = store.window_s
    admit(store, name, T0, n=8)
    (late,) = admit(store, name, T0 + window - 1)  # 9 of 10 in the window: the provider says 1 left
    # The answer comes 2 s later, when the first 8 have left our window (and the provider's).
    store.learn("openai", name, LIMITS, seen(1), own=(late.own_requests, late.own_tokens), now=T0 + window + 1)
    assert left(store, name, T0 + window + 1) == 9  # the old rule held 10 - 1 - 1 = 8 more until the reset


def test_calls_made_before_a_limit_was_known_are_held_until_the_providers_reset(bucket):
    store, name = bucket
    unlimited = RateLimits(0, 0)
    rid = uuid.uuid4().hex
    before = store.admit("openai", name, unlimited, waiter=rid, reservation=rid, priority=5, tenant="t",
                         weight=1.0, tokens=10, now=T0)
    assert before.admitted and before.own_requests is None  # nothing counted: no limit known
    store.learn("openai", name, unlimited, seen(3, reset_s=4.0), own=(None, None), now=T0 + 1)
    state = store.state("openai", name, unlimited, now=T0 + 1)
    assert state.limits.rpm == 10 and state.requests_left == 3
    assert store.state("openai", name, unlimited, now=T0 + 1 + 4.1).requests_left == 10


def test_a_bucket_without_limits_is_looked_at_once_per_recheck_and_at_once_after_learning(bucket):
    store, name = bucket
    elsewhere = QuotaStore(store.r, keys=store.keys, window_s=10)  # another worker process
    none = RateLimits(0, 0)
    assert store.unlimited("openai", name, none) and elsewhere.unlimited("openai", name, none)
    assert not store.unlimited("openai", name, LIMITS)  # a configured limit: at once, without looking
    elsewhere.learn("openai", name, none, seen(9), own=(None, None), now=time.time())
    assert not elsewhere.unlimited("openai", name, none)  # the process that learned it: at its next attempt
    assert store.unlimited("openai", name, none)  # another: not before its next look...
    time.sleep(store.unlimited_recheck_s)
    assert not store.unlimited("openai", name, none)  # ...which is at most the recheck later


def test_a_pause_makes_a_bucket_without_limits_ask_until_it_ends(bucket):
    store, name = bucket
    none = RateLimits(0, 0)
    assert store.unlimited("openai", name, none)
    store.learn("openai", name, none, pause_s=0.8, now=time.time())  # a 429's Retry-After
    assert not store.unlimited("openai", name, none)
    time.sleep(0.8)
    assert store.unlimited("openai", name, none)


def test_after_a_call_the_reservation_is_settled_and_the_answer_learned_in_one_round_trip(bucket):
    store, name = bucket
    (first,) = admit(store, name, T0)
    with Monitor(store.r) as monitor:
        store.after_call("openai", name, LIMITS, first.reservation, 12, sent_at=T0 + 0.1,
                         info=seen(10 - 1 - 2), own=(first.own_requests, first.own_tokens), now=T0 + 1)
    assert [args[0] for args in monitor.sent()] == ["EVALSHA"]
    assert left(store, name, T0 + 1) == 10 - 1 - 2  # ours, settled, and the 2 the provider counted elsewhere


def test_a_waiter_far_back_in_a_deep_line_is_told_its_real_wait(bucket):
    """Past the waiters the admission reads one by one (`scan_limit`), the line is counted, not
    read: a waiter 600 places back at 10 requests per window learns it waits ~60 windows (it
    was told one window, so every waiter asked again every window: the whole line churned
    through the broker and the scripts all the time)."""
    store, name = bucket
    store.scan_limit = 50
    admit(store, name, T0, n=10)  # the window is full
    waits = []
    for i in range(600):
        rid = f"w{i:04d}"
        admission = store.admit("openai", name, LIMITS, waiter=rid, reservation=rid, priority=5, tenant="t",
                                weight=1.0, tokens=10, now=T0 + 0.001 * i)
        assert not admission.admitted
        waits.append(admission.wait_s)
    window = store.window_s
    assert waits[0] <= window + 0.01  # the first waiter: when the window's first slot frees
    assert waits[49] <= 5 * window + 0.01  # within the scanned part: ~5 windows for 50 ahead
    for position in (100, 300, 599):  # past it: ~position / 10 windows
        assert position / 10 * window * 0.8 <= waits[position] <= (position / 10 + 2) * window, position
    ends = [T0 + 0.001 * i + w for i, w in enumerate(waits)]  # each told a turn no earlier than the one before
    assert all(later >= earlier - 1e-6 for earlier, later in pairwise(ends))
