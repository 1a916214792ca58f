"""The cluster's counters and histograms, kept in one Redis hash (`Keys.metrics`) by the same
Lua scripts that change task states, so every worker's work is counted with no extra round
trip. This module is the one place that knows the protocol:

- a command hands a transition `Sample`s; `encode_samples` turns them into the script's
  argument `name|k=v,k=v=<value>` (a counter) or `~name|k=v=<value>` (a histogram
  observation), joined by `;`;
- the scripts store a counter as the field `name|labels` and an observation as
  `name_bucket|labels|<le>` (non-cumulative) and `name_sum|labels`; a histogram's count is
  the sum of its buckets (a `name_count|labels` field kept by earlier versions is ignored);
- `MetricsStore.read` decodes the hash back into counters and cumulative histograms for /metrics.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis

from aiintegration.store.keys import Keys

# What a label value may not contain: the protocol's own separators.
_UNSAFE = re.compile(r"[;,=|]")
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: float
    labels: Labels = ()
    histogram: bool = False


def counter(name: str, value: float, **labels: str) -> Sample:
    """Add `value` to counter `name{labels}`."""
    return Sample(name, value, tuple(sorted(labels.items())))


def observation(name: str, value: float, **labels: str) -> Sample:
    """Observe `value` in histogram `name{labels}`."""
    return Sample(name, value, tuple(sorted(labels.items())), histogram=True)


def _labels_text(labels: Labels) -> str:
    return ",".join(f"{k}={_UNSAFE.sub('_', str(v))}" for k, v in labels)


def encode_samples(samples: Sequence[Sample]) -> str:
    """The TRANSITION script's metrics argument."""
    return ";".join(f"{'~' if s.histogram else ''}{s.name}|{_labels_text(s.labels)}={s.value!r}" for s in samples)


def _parse_labels(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


@dataclass
class Histogram:
    labels: dict[str, str]
    buckets: list[tuple[str, float]]  # (le, cumulative count), ending with +Inf
    sum: float


@dataclass
class ClusterMetrics:
    counters: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    histograms: dict[str, list[Histogram]] = field(default_factory=dict)


def decode(raw: Mapping[str, str]) -> ClusterMetrics:
    """The metrics hash → counters and cumulative histograms."""
    counters: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    buckets: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sums: dict[tuple[str, str], float] = {}
    for name_field, value in raw.items():
        name, _, rest = name_field.partition("|")
        if name.endswith("_bucket"):
            labels, _, le = rest.rpartition("|")
            buckets[(name.removesuffix("_bucket"), labels)][le] = float(value)
        elif name.endswith("_sum"):
            sums[(name.removesuffix("_sum"), rest)] = float(value)
        elif not name.endswith("_count"):
            counters[name].append((_parse_labels(rest), float(value)))
    histograms: dict[str, list[Histogram]] = defaultdict(list)
    for (name, labels), by_le in sorted(buckets.items()):
        cumulative, rows = 0.0, []
        for le, n in sorted(by_le.items(), key=lambda kv: float(kv[0])):
            cumulative += n
            rows.append((le, cumulative))
        if not rows or rows[-1][0] != "+Inf":
            rows.append(("+Inf", cumulative))
        histograms[name].append(Histogram(_parse_labels(labels), rows, sums.get((name, labels), 0.0)))
    return ClusterMetrics(dict(counters), dict(histograms))


class MetricsStore:
    def __init__(self, client: redis.Redis, *, keys: Keys):
        self.r, self.keys = client, keys

    def read(self) -> ClusterMetrics:
        return decode(cast(dict[str, str], self.r.hgetall(self.keys.metrics)))
