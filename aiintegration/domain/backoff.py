"""The one place that computes how long to wait before a retry."""

from __future__ import annotations

import random
from collections.abc import Callable


def compute_backoff(
    attempt: int,
    *,
    base_s: float = 2.0,
    max_s: float = 60.0,
    retry_after_s: float | None = None,
    retry_after_max_s: float = 120.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Exponential backoff with full jitter: uniform in [0, min(max_s, base_s * 2**(attempt-1))].
    A provider's Retry-After wins when it asks for longer, capped at `retry_after_max_s`
    (a separate cap: a provider may legitimately ask for more than our own backoff cap).
    """
    ceiling = min(max_s, base_s * 2 ** max(attempt - 1, 0))
    delay = ceiling * rand()
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, retry_after_max_s))
    return float(round(delay, 3))
