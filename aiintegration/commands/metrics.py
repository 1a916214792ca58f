"""What /metrics reports for the whole cluster: the counters and histograms kept in Redis (the
task counters by the transitions themselves, the rest flushed by every process's buffer:
store/metrics.py), and gauges read at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiintegration.commands.context import Context
from aiintegration.commands.providers import quota_state
from aiintegration.commands.usage import budgets_view
from aiintegration.domain.states import MAX_PRIORITY
from aiintegration.store.metrics import ClusterMetrics

BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class Gauges:
    queue_depth: dict[int, int]  # API priority → broker messages waiting
    tasks: dict[str, int]  # status → records
    dlq_size: int
    workers_alive: int
    breakers: dict[str, int]  # provider → 0 closed, 1 half-open, 2 open
    ratelimit_remaining: dict[tuple[str, str, str], int]  # (provider, model or "*", requests|tokens) → left
    budget_spent: dict[tuple[str, str, str], float]  # (tenant, day|month, cost|tokens) → spent this window
    lane_depth: dict[str, int] = field(default_factory=dict)  # provider|model → tasks waiting for a batch
    batches_in_flight: dict[str, int] = field(default_factory=dict)  # provider → lane batches not ended


def _remaining(ctx: Context) -> dict[tuple[str, str, str], int]:
    out = {}
    for name in ctx.providers.order():
        config = ctx.providers.get(name)
        if config is None:
            continue
        for bucket, state in quota_state(ctx, config).items():
            for kind in ("requests", "tokens"):
                if state[kind] is not None:
                    out[(name, bucket, kind)] = int(state[kind])
    return out


def cluster_metrics(ctx: Context) -> tuple[ClusterMetrics, Gauges]:
    depth = ctx.broker.depth_by_step()
    gauges = Gauges(
        queue_depth={MAX_PRIORITY - step: n for step, n in enumerate(depth)},
        tasks=ctx.tasks.counts(), dlq_size=ctx.dlq.size(), workers_alive=ctx.workers.alive(),
        breakers={name: BREAKER_VALUE.get(ctx.breakers[name].public_state(), 0) for name in ctx.providers.order()},
        ratelimit_remaining=_remaining(ctx),
        budget_spent={(row["tenant"], window, kind): value for row in budgets_view(ctx)
                      for window in ("day", "month") for kind, value in row[window]["spent"].items()},
        lane_depth=ctx.lane.depths(), batches_in_flight=ctx.lane.in_flight(),
    )
    return ctx.metrics.read(), gauges
