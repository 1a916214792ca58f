"""The per-process metrics buffer (store/metrics.py) on a real Redis: samples reach the hash
within the flush interval in one write, survive a Redis outage without being counted twice,
are written when a process exits normally, and a forked child never writes its parent's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aiintegration.commands.create import create_generation_task
from aiintegration.store.keys import Keys
from aiintegration.store.metrics import MetricsStore, counter, observation
from tests.support import redis_url, wait_for


def fresh(db: int, prefix: str) -> tuple[redis.Redis, Keys]:
    client = redis.Redis.from_url(redis_url(db), decode_responses=True)
    client.delete(f"{prefix}:metrics")
    return client, Keys(prefix)


def test_samples_are_summed_in_the_process_and_written_within_the_interval(db):
    client, keys = fresh(db, "buf1")
    store = MetricsStore(client, keys=keys, flush_s=1.0)  # long enough that nothing is written before the check below
    for _ in range(50):
        store.record([counter("aii_tokens_total", 3, direction="input", provider="p"),
                      observation("aii_provider_call_seconds", 0.25, provider="p")])
    assert client.hgetall(keys.metrics) == {}  # nothing written per sample
    stored = wait_for(lambda: client.hgetall(keys.metrics), timeout_s=5, what="the flush")
    assert stored == {"aii_tokens_total|direction=input,provider=p": "150",
                      "aii_provider_call_seconds_bucket|provider=p|0.25": "50",
                      "aii_provider_call_seconds_sum|provider=p": "12.5"}
    (hist,) = store.read().histograms["aii_provider_call_seconds"]
    assert hist.buckets[-1] == ("+Inf", 50.0)
    # an idle process keeps no flusher thread
    wait_for(lambda: not any(t.name == "aii-metrics" and t.is_alive() for t in threading.enumerate()),
             timeout_s=5, what="the flusher to stop when there is nothing to write")


def test_an_unreachable_redis_keeps_the_samples_for_the_next_flush_and_counts_them_once(db):
    client, keys = fresh(db, "buf2")
    # nothing listens on port 1
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0), decode_responses=True)
    store = MetricsStore(dead, keys=keys, flush_s=60)
    store.record([counter("aii_throttled_total", 1, provider="p")])
    assert store.flush() is False
    store.record([counter("aii_throttled_total", 1, provider="p")])
    assert store.flush() is False
    store.r = client  # Redis is back
    assert store.flush() is True
    assert client.hgetall(keys.metrics) == {"aii_throttled_total|provider=p": "2"}
    assert store.flush() is True and client.hgetall(keys.metrics) == {"aii_throttled_total|provider=p": "2"}


def test_a_process_that_exits_writes_what_it_buffered_and_a_forked_child_not_its_parents(db):
    client, keys = fresh(db, "buf3")
    script = textwrap.dedent(f"""
        import os, sys, redis
        from aiintegration.store.keys import Keys
        from aiintegration.store.metrics import MetricsStore, counter
        store = MetricsStore(redis.Redis.from_url({redis_url(db)!r}, decode_responses=True), keys=Keys("buf3"),
                             flush_s=60)  # far longer than this process lives: only the exit writes
        store.record([counter("aii_test_total", 1, who="parent")])
        child = os.fork()
        if child == 0:
            store.record([counter("aii_test_total", 10, who="child")])
            sys.exit(0)  # a normal exit: its own buffer is written, not the parent's copy
        os.waitpid(child, 0)
    """)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, cwd=os.getcwd())
    assert time.monotonic() - started < 20
    assert client.hgetall(keys.metrics) == {"aii_test_total|who=parent": "1", "aii_test_total|who=child": "10"}


def test_a_worker_stopped_with_sigterm_writes_its_buffer_on_the_way_out(db):
    """A warm shutdown is a normal exit: the samples of the last second are not lost."""
    from tests.support import Worker, make_context, wait_status

    ctx = make_context(db)
    with Worker(db, env={"AII_METRICS_FLUSH_S": "600"}, name="flush-at-exit") as worker:
        task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "x"},
                                            requested_by="t")
        wait_status(ctx, task_id, ["succeeded"])
        assert "aii_provider_call_seconds" not in ctx.metrics.read().histograms  # still in the worker's buffer
        worker.stop()
    (calls,) = ctx.metrics.read().histograms["aii_provider_call_seconds"]
    assert calls.buckets[-1][1] == 1
