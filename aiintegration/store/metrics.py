"""The cluster's counters and histograms, kept in one Redis hash (`Keys.metrics`). This module
is the one place that knows its layout:

- a counter is the field `name|k=v,k=v`; a histogram observation adds 1 to
  `name_bucket|labels|<le>` (buckets stored non-cumulative; a histogram's count is the sum of
  its buckets, and a `name_count|labels` field kept by earlier versions is ignored) and its
  value to `name_sum|labels`;
- the four task counters that follow from state changes (`aii_tasks_created_total`,
  `aii_tasks_finished_total`, `aii_task_retries_total`, `aii_tasks_timed_out_total`) are
  counted by the Lua scripts that make those changes: exact, even across a SIGKILL;
- everything else — every histogram, the token, cost, throttling and batch counters — is a
  `Sample` a process hands `MetricsStore.record`: summed per field in the process's memory and
  written by a background thread every `flush_s` seconds in one MULTI/EXEC, and at exit. Per
  task that took 8 commands out of the scripts of every attempt (issue 18); the price is that
  /metrics trails a process by up to `flush_s`, and a process killed with SIGKILL takes at
  most its last `flush_s` of those samples with it. The usage ledger (`/v1/usage`), the
  account of record, is written with the state change as before.
- `MetricsStore.read` decodes the hash into counters and cumulative histograms for /metrics.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis

from aiintegration.store.keys import Keys

log = logging.getLogger(__name__)
# What a label value may not contain: the layout's own separators.
_UNSAFE = re.compile(r"[;,=|]")
# Histogram bucket bounds (seconds), as every histogram here measures durations.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
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


def bucket(value: float) -> str:
    """The `le` of the bucket an observation falls in (`+Inf` past the last bound)."""
    return next((f"{b:g}" for b in BUCKETS if value <= b), "+Inf")


def fields_of(sample: Sample) -> list[tuple[str, float]]:
    """The hash fields one sample adds to, and by how much."""
    labels = _labels_text(sample.labels)
    if not sample.histogram:
        return [(f"{sample.name}|{labels}", sample.value)]
    return [(f"{sample.name}_bucket|{labels}|{bucket(sample.value)}", 1),
            (f"{sample.name}_sum|{labels}", sample.value)]


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
    """The metrics hash: read whole for /metrics, and written from this process's buffer."""

    def __init__(self, client: redis.Redis, *, keys: Keys, flush_s: float = 1.0):
        if flush_s <= 0:
            raise ValueError("flush_s must be positive")
        self.r, self.keys, self.flush_s = client, keys, flush_s
        self._at_exit = False
        self._reset()

    def _reset(self) -> None:
        """A fresh buffer for this process (also in a forked child: what the parent holds is
        the parent's to write)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the buffer
        self._writing = threading.Lock()  # one flush at a time: one that is under way finishes before exit
        self._pending: dict[str, float] = defaultdict(float)
        self._thread: threading.Thread | None = None
        self._failing = False

    def read(self) -> ClusterMetrics:
        return decode(cast(dict[str, str], self.r.hgetall(self.keys.metrics)))

    def record(self, samples: Iterable[Sample]) -> None:
        """Add samples to this process's buffer; the flusher writes them within `flush_s`."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            for sample in samples:
                for name, amount in fields_of(sample):
                    self._pending[name] += amount
            if self._pending and self._thread is None:
                self._thread = threading.Thread(target=self._flusher, name="aii-metrics", daemon=True)
                self._thread.start()
                if not self._at_exit:  # a forked child inherits the registration
                    atexit.register(self.flush)
                    self._at_exit = True

    def _flusher(self) -> None:
        """Write the buffer every `flush_s` while there is something to write; a buffer found
        empty ends the thread (the next `record` starts another), so an idle process has none."""
        while True:
            time.sleep(self.flush_s)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
            self.flush()

    def flush(self) -> bool:
        """Write what the buffer holds in one MULTI/EXEC. When Redis cannot be reached the
        amounts go back into the buffer for the next flush (a transaction that failed before its
        EXEC wrote nothing). Returns whether everything was written."""
        if self._pid != os.getpid():
            return True
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, defaultdict(float)
            if not pending:
                return True
            pipe = self.r.pipeline(transaction=True)
            for name, amount in pending.items():
                if "_bucket|" in name:
                    pipe.hincrby(self.keys.metrics, name, int(amount))
                else:
                    pipe.hincrbyfloat(self.keys.metrics, name, amount)
            try:
                pipe.execute()
            except redis.RedisError as exc:
                with self._lock:
                    for name, amount in pending.items():
                        self._pending[name] += amount
                if not self._failing:
                    log.warning("metrics not written yet (kept for the next flush): %s", type(exc).__name__)
                self._failing = True
                return False
            self._failing = False
            return True
