"""The fake provider's scripted behaviour, with plain numbers (no server)."""

from __future__ import annotations

import random

from tests.fake_provider import Behaviour


def test_a_fixed_delay_is_the_same_for_every_answer_and_draws_nothing():
    rng = random.Random(7)
    assert [Behaviour(delay_s=0.25).delay(rng) for _ in range(3)] == [0.25, 0.25, 0.25]
    assert rng.random() == random.Random(7).random()  # seeded failure draws stay where they were


def test_a_delay_range_spreads_answers_uniformly_between_its_bounds():
    rng = random.Random(1)
    delays = [Behaviour(delay_s=1.0, delay_max_s=3.0).delay(rng) for _ in range(2000)]
    assert all(1.0 <= d <= 3.0 for d in delays)
    assert 1.9 < sum(delays) / len(delays) < 2.1
    assert min(delays) < 1.05 and max(delays) > 2.95


def test_a_range_no_wider_than_its_floor_is_the_fixed_delay():
    assert Behaviour(delay_s=2.0, delay_max_s=1.0).delay(random.Random(1)) == 2.0
