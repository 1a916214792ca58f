"""`/metrics` in Prometheus format, for the whole cluster (commands/metrics.py gathers it)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from aiintegration.commands.context import Context
from aiintegration.commands.metrics import cluster_metrics
from aiintegration.domain.batching import split_group
from aiintegration.web.current import context

bp = Blueprint("metrics", __name__)
HELP = {
    "aii_tasks_created_total": "Generation tasks created",
    "aii_tasks_finished_total": "Tasks that reached a terminal state",
    "aii_task_retries_total": "Automatic retries scheduled",
    "aii_tasks_timed_out_total": "Attempts stopped at their deadline",
    "aii_tokens_total": "Provider tokens used",
    "aii_cost_total": "Estimated provider cost (AII_PRICES), in the table's currency",
    "aii_task_duration_seconds": "Created to terminal state (end to end)",
    "aii_task_queue_wait_seconds": "Enqueued (or due) to claimed by a worker",
    "aii_provider_call_seconds": "Provider call time of successful attempts",
    "aii_throttled_total": "Attempts not made: the provider's quota could not cover them yet",
    "aii_ratelimit_wait_seconds": "First throttled to admitted, per attempt that waited for quota",
    "aii_batch_saved_cost_total": "Batch lane: the realtime price minus what its batches cost (AII_PRICES / built-in)",
}


class ClusterCollector(Collector):
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        stored, gauges = cluster_metrics(self.ctx)
        for name, rows in sorted(stored.counters.items()):
            keys = sorted({k for labels, _ in rows for k in labels})
            family = CounterMetricFamily(name.removesuffix("_total"), HELP.get(name, name), labels=keys)
            for labels, value in rows:
                family.add_metric([labels.get(k, "") for k in keys], value)
            yield family
        for name, histograms in sorted(stored.histograms.items()):
            keys = sorted({k for h in histograms for k in h.labels})
            hist = HistogramMetricFamily(name, HELP.get(name, name), labels=keys)
            for h in histograms:
                hist.add_metric([h.labels.get(k, "") for k in keys], h.buckets, h.sum)
            yield hist
        depth = GaugeMetricFamily("aii_queue_depth", "Broker messages waiting, by API priority", labels=["priority"])
        for priority, n in gauges.queue_depth.items():
            depth.add_metric([str(priority)], n)
        yield depth
        tasks = GaugeMetricFamily("aii_tasks", "Task records by status", labels=["status"])
        for status, n in gauges.tasks.items():
            tasks.add_metric([status], n)
        yield tasks
        yield GaugeMetricFamily("aii_dlq_size", "Entries waiting in the dead-letter queue", value=gauges.dlq_size)
        yield GaugeMetricFamily("aii_workers_alive", "Worker processes seen in the last 15 s", value=gauges.workers_alive)
        breaker = GaugeMetricFamily("aii_provider_breaker_state", "0 closed, 1 half-open, 2 open", labels=["provider"])
        for name, value in gauges.breakers.items():
            breaker.add_metric([name], value)
        yield breaker
        left = GaugeMetricFamily("aii_ratelimit_remaining", "Left in the provider's current quota window",
                                 labels=["provider", "model", "kind"])
        for (provider, model, kind), value in gauges.ratelimit_remaining.items():
            left.add_metric([provider, model, kind], value)
        yield left
        spent = GaugeMetricFamily("aii_budget_spent", "Spent of a tenant's budget in the current window (AII_BUDGETS)",
                                  labels=["tenant", "window", "kind"])
        for (tenant, window, kind), value in gauges.budget_spent.items():
            spent.add_metric([tenant, window, kind], value)
        yield spent
        lane = GaugeMetricFamily("aii_batch_lane_depth", "Batch lane tasks waiting for a batch",
                                 labels=["provider", "model"])
        for group, n in gauges.lane_depth.items():
            lane.add_metric(list(split_group(group)), n)
        yield lane
        flying = GaugeMetricFamily("aii_batches_in_flight", "Batch lane batches not ended yet", labels=["provider"])
        for name, n in gauges.batches_in_flight.items():
            flying.add_metric([name], n)
        yield flying


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(context()))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
