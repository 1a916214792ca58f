"""`/metrics` in Prometheus format, for the whole cluster: counters and histograms that the
workers' Lua transitions keep in `{p}:metrics`, plus gauges read from Redis at scrape time."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from aiintegration.commands.breaker import breaker_for
from aiintegration.commands.context import Context
from aiintegration.config import broker_lists
from aiintegration.domain.states import TaskStatus
from aiintegration.web import context

bp = Blueprint("metrics", __name__)
BREAKER_VALUE = {"closed": 0, "half_open": 1, "open": 2}
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
}


def _labels(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


class ClusterCollector:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx, p = self.ctx, self.ctx.settings.key_prefix
        raw: dict[str, str] = ctx.redis.hgetall(f"{p}:metrics")
        counters: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        hist: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
        for field, value in raw.items():
            name, _, rest = field.partition("|")
            if name.endswith("_bucket"):
                labels, _, le = rest.rpartition("|")
                hist[(name[:-7], labels)]["buckets"][le] = float(value)
            elif name.endswith("_sum") and name[:-4] in HELP and name[:-4].endswith("_seconds"):
                hist[(name[:-4], rest)]["sum"] = float(value)
            elif name.endswith("_count") and name[:-6].endswith("_seconds"):
                continue
            else:
                counters[name].append((_labels(rest), float(value)))
        for name, rows in sorted(counters.items()):
            keys = sorted({k for labels, _ in rows for k in labels})
            family = CounterMetricFamily(name.removesuffix("_total"), HELP.get(name, name), labels=keys)
            for labels, value in rows:
                family.add_metric([labels.get(k, "") for k in keys], value)
            yield family
        families: dict[str, HistogramMetricFamily] = {}
        for (name, label_text), data in sorted(hist.items()):
            labels = _labels(label_text)
            keys = sorted(labels)
            family = families.setdefault(name, HistogramMetricFamily(name, HELP.get(name, name), labels=keys))
            ordered = sorted(data["buckets"].items(), key=lambda kv: float(kv[0]))
            cumulative, buckets = 0.0, []
            for le, n in ordered:
                cumulative += n
                buckets.append((le, cumulative))
            if not buckets or buckets[-1][0] != "+Inf":
                buckets.append(("+Inf", cumulative))
            family.add_metric([labels[k] for k in keys], buckets, data["sum"])
        yield from families.values()
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        ctx, p = self.ctx, self.ctx.settings.key_prefix
        pipe = ctx.redis.pipeline(transaction=False)
        for name in broker_lists():
            pipe.llen(name)
        for status in TaskStatus:
            pipe.zcard(f"{p}:idx:status:{status}")
        pipe.zcard(f"{p}:idx:dlq")
        pipe.zcount(f"{p}:workers", time.time() - 15, "+inf")
        values = pipe.execute()
        depth = GaugeMetricFamily("aii_queue_depth", "Broker messages waiting, by API priority", labels=["priority"])
        for step in range(10):
            depth.add_metric([str(9 - step)], values[step])
        yield depth
        tasks = GaugeMetricFamily("aii_tasks", "Task records by status", labels=["status"])
        for i, status in enumerate(TaskStatus):
            tasks.add_metric([status.value], values[10 + i])
        yield tasks
        yield GaugeMetricFamily("aii_dlq_size", "Entries waiting in the dead-letter queue", value=values[-2])
        yield GaugeMetricFamily("aii_workers_alive", "Worker processes seen in the last 15 s", value=values[-1])
        breaker = GaugeMetricFamily("aii_provider_breaker_state", "0 closed, 1 half-open, 2 open",
                                    labels=["provider"])
        for name in ctx.providers.order():
            breaker.add_metric([name], BREAKER_VALUE.get(breaker_for(ctx, name).public_state(), 0))
        yield breaker


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(context()))  # type: ignore[arg-type]
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
