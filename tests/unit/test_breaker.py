"""The breaker adapter over pybreaker's public API, on its in-memory storage: if pybreaker's
behaviour changes under the adapter, these fail (the Redis storage is exercised by the
integration tests)."""

from __future__ import annotations

import pybreaker

from aiintegration.store.breakers import ProviderBreaker


def breaker(fail_max=3, reset_s=30.0):
    changes = []
    b = ProviderBreaker("p", pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED), fail_max=fail_max,
                        reset_s=reset_s, on_change=lambda name, old, new: changes.append((name, old, new)))
    return b, changes


def test_consecutive_transient_failures_open_the_breaker_and_say_so_once():
    b, changes = breaker(fail_max=3)
    for _ in range(2):
        b.failure()
    assert b.state(fresh=True) == "closed" and b.allows()
    b.failure()
    assert b.state(fresh=True) == "open" and not b.allows()
    assert 29 < b.blocked_for() <= 30
    assert changes == [("p", "closed", "open")]


def test_a_success_resets_the_count_of_consecutive_failures():
    b, _ = breaker(fail_max=3)
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state(fresh=True) == "closed"


def test_after_the_reset_timeout_a_probe_goes_and_its_success_closes_the_breaker():
    b, changes = breaker(fail_max=1, reset_s=0.0)
    b.failure()
    assert b.storage.state == "open"
    assert b.blocked_for() == 0 and b.state(fresh=True) == "half-open"
    b.success()
    assert b.state(fresh=True) == "closed"
    assert [c[2] for c in changes] == ["open", "half-open", "closed"]


def test_a_failed_probe_opens_the_breaker_again():
    b, _ = breaker(fail_max=1, reset_s=0.0)
    b.failure()
    assert b.allows()  # half-open now
    b.failure()
    assert b.state(fresh=True) == "open"


def test_outcomes_of_calls_that_began_before_the_breaker_opened_change_nothing():
    b, changes = breaker(fail_max=1, reset_s=60.0)
    b.failure()
    b.success()  # a slow call started while closed, answering late
    b.failure()
    assert b.state(fresh=True) == "open" and len(changes) == 1
