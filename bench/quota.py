"""Provider quotas (issue 15): one workload run twice in one run, against a fake provider that
enforces an account limit like the real ones, without the limiter (`AII_QUOTAS=off`, no limits
configured: every 429 is a retry with backoff) and with it (limits configured, admission on).

The workload, the same on both sides (seeded): a bursty tenant `bulk` submits `--bulk` tasks at
once with priorities 1-5; a trickle tenant `interactive` submits one priority-5 task every
`--trickle-every` s; `--urgent` priority-9 tasks (tenant `bulk`) arrive one every
`--urgent-every` s while the backlog waits. Two worker processes x 64 threads, the `openai`
provider through the real SDK, the fake provider in this process on 127.0.0.1 answering after
1-3 s. Time is scaled: the account limit is per `--window` seconds (10 s, the workers'
`AII_QUOTA_WINDOW_S`) instead of 60, so `--rpm 100 --tpm 10000` per 10 s is 600 RPM / 60k TPM.
A request reserves ~90 tokens (40 of prompt + max_tokens 50): requests, not tokens, bind. The
1-3 s calls are a larger share of a 10 s window than of a minute, which costs the limiter more
here than at 60 s (`--window 60`; bench/RESULTS.md has both).

    .venv/bin/python bench/quota.py [--bulk 500] [--rpm 100] [--tpm 10000] [--window 10]

Measured per side: the provider's 429s, retries spent (attempts - 1 over every task), tasks
dead-lettered / succeeded, requests admitted per window as a fraction of the limit while the
bulk backlog waited (the mean over every window position from the first admitted call to the
last bulk task's successful call), the priority-9 tasks' wait (created -> start of the attempt
that succeeded) beside the wait for the next call the provider admitted after they arrived,
completion times (created -> finished) per tenant, wall time (first submission -> all terminal).
`--timeline` adds the calls the provider admitted in each second; each side writes its tasks,
with their events, to `tasks-<side>.jsonl` in the run's directory (printed) for a closer look.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import bench_valkey, stop  # noqa: E402

KEY = "sk-bench-quota-0123456789abcdef"
PROMPT = "Summarise the attached order history for the customer in two short sentences, please. " * 2
TEXT = {"prompt": PROMPT[:160], "max_tokens": 50}  # 40 prompt tokens at 4 characters each + 50
TERMINAL = {"succeeded", "dead_lettered", "cancelled"}


@dataclass(frozen=True)
class Job:
    at: float  # seconds after the side starts
    tenant: str
    priority: int
    kind: str  # "bulk" | "trickle" | "urgent"


def workload(args: argparse.Namespace) -> list[Job]:
    rng = random.Random(args.seed)
    jobs = [Job(0.0, "bulk", rng.randint(1, 5), "bulk") for _ in range(args.bulk)]
    jobs += [Job(1.0 + i * args.trickle_every, "interactive", 5, "trickle") for i in range(args.trickle)]
    jobs += [Job(args.urgent_from + i * args.urgent_every, "bulk", 9, "urgent") for i in range(args.urgent)]
    return sorted(jobs, key=lambda j: j.at)


def start_workers(url: str, quotas: bool, args: argparse.Namespace, tmp: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "openai", "AII_PROVIDER_ALLOW_PRIVATE": "1",
           "AII_QUOTAS": "on" if quotas else "off", "AII_QUOTA_WINDOW_S": str(args.window),
           "AII_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"}
    side = "with" if quotas else "without"
    procs, logs = [], []
    for i in range(args.workers):
        log = tmp / f"worker-{side}-{i}.log"
        with log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "worker", "-P", "threads",
                 "-c", str(args.concurrency), "-E", "-l", "INFO", "-n", f"quota-{side}-{i}@%h", "--without-gossip",
                 "--without-mingle"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    end = time.monotonic() + 60
    while not all(" ready." in log.read_text(errors="replace") for log in logs):
        if time.monotonic() > end or any(p.poll() is not None for p in procs):
            for p in procs:
                stop(p)
            raise RuntimeError("workers did not start:\n" + "\n".join(log.read_text()[-1500:] for log in logs))
        time.sleep(0.1)
    return procs


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def per_window(admitted: Sequence[float], start: float, end: float, window: float, step: float = 0.05) -> float:
    """Mean number of admitted calls in [s, s + window) over every s from `start` to `end - window`:
    the admissions come in bursts a window apart, so it needs a few windows to average them
    (nan under two)."""
    if end - start < 2 * window:
        return math.nan
    counts, s, i, j = [], start, 0, 0
    while s <= end - window + 1e-9:
        while i < len(admitted) and admitted[i] < s:
            i += 1
        while j < len(admitted) and admitted[j] < s + window:
            j += 1
        counts.append(j - i)
        s += step
    return sum(counts) / len(counts)


def run_side(url: str, quotas: bool, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from aiintegration.celery_app import CeleryPublisher
    from aiintegration.commands.context import Context
    from aiintegration.commands.create import create_generation_task
    from aiintegration.config import Settings
    from aiintegration.domain.auth import Caller, Role
    from aiintegration.domain.providers import ProviderConfig
    from tests.fake_limits import AccountLimits
    from tests.fake_provider import Behaviour, FakeProvider
    from tests.support import celery_for, events_of

    ctx = Context.build(Settings.from_env({**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "openai"}),
                        CeleryPublisher(celery_for(url)))
    with FakeProvider(seed=args.seed) as fake:
        fake.default = Behaviour(delay_s=args.latency_min, delay_max_s=args.latency_max, words=6)
        fake.limits = AccountLimits(rpm=args.rpm, tpm=args.tpm, window_s=args.window)
        limits = {"rpm": args.rpm, "tpm": args.tpm} if quotas else {}
        ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=30,
                                         limits=limits))
        ctx.providers.set_order(["openai"])
        workers = start_workers(url, quotas, args, tmp)
        jobs: dict[str, Job] = {}
        try:
            t0 = time.time()
            for job in workload(args):
                time.sleep(max(0.0, t0 + job.at - time.time()))
                task_id, _ = create_generation_task(ctx, caller=Caller(job.tenant, Role.CLIENT),
                                                    task_type="text_generation", request_content=TEXT,
                                                    requested_by=f"quota-bench-{job.kind}", priority=job.priority)
                jobs[task_id] = job
            deadline = time.monotonic() + args.max_seconds
            while True:
                records = [r for r in ctx.tasks.get_many(list(jobs)) if r is not None]
                if all(r.status in TERMINAL for r in records) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            wall = max((r.finished_at or time.time()) for r in records) - t0
        finally:
            for w in workers:
                stop(w)
        offset = time.time() - time.monotonic()  # the fake's clock is monotonic, the records' epoch
        admitted = [a + offset for a in fake.limiter.admitted_at]
        rejected, max_in_window = fake.limiter.rejected, fake.limiter.max_in_window(args.window)

    by_kind: dict[str, list[Any]] = {"bulk": [], "trickle": [], "urgent": []}
    for r in records:
        by_kind[jobs[r.id].kind].append(r)
    ok = [r for r in records if r.status == "succeeded"]
    bulk_calls = [r.started_at for r in by_kind["bulk"] if r.status == "succeeded" and r.started_at]
    saturated_end = max(bulk_calls, default=admitted[0] if admitted else 0.0)

    def done_s(kind: str) -> list[float]:
        return [r.finished_at - r.created_at for r in by_kind[kind] if r.status == "succeeded" and r.finished_at]

    urgent = [r for r in by_kind["urgent"] if r.status == "succeeded" and r.started_at]
    next_slot = [next((a for a in admitted if a >= r.created_at), math.nan) - r.created_at for r in urgent]
    events = {r.id: events_of(ctx, r.id) for r in records}
    throttled = sum(1 for evs in events.values() for e in evs if e["type"] == "task.throttled")
    with (tmp / f"tasks-{'with' if quotas else 'without'}.jsonl").open("w") as out:  # for a closer look
        for r in records:
            out.write(json.dumps({"kind": jobs[r.id].kind, "record": r.public(), "events": events[r.id]}) + "\n")
    return {
        "rejected": rejected, "calls": len(admitted) + rejected, "retries": sum(r.attempts - 1 for r in records),
        "dead": sum(1 for r in records if r.status == "dead_lettered"), "succeeded": len(ok), "tasks": len(jobs),
        "unfinished": sum(1 for r in records if r.status not in TERMINAL), "throttled": throttled,
        "dlq_codes": Counter((r.error or {}).get("code", "?") for r in records if r.status == "dead_lettered"),
        "per_window": per_window(admitted, admitted[0], saturated_end, args.window) if admitted else math.nan,
        "saturated_s": saturated_end - admitted[0] if admitted else 0.0, "max_in_window": max_in_window,
        "urgent_wait": [r.started_at - r.created_at for r in urgent], "urgent_next_slot": next_slot,
        "urgent_ok": len(urgent), "trickle_done": done_s("trickle"), "bulk_done": done_s("bulk"), "wall": wall,
        "timeline": [a - t0 for a in admitted], "saturated_end_s": saturated_end - t0,
    }


def table(sides: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    from aiintegration.store.quotas import WINDOW_MARGIN

    refill = args.window * WINDOW_MARGIN  # the window as the limiter holds it: when a slot comes back
    def both(fn: Any) -> str:
        return " | ".join(fn(s) for s in sides.values())

    def dead(s: dict[str, Any]) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in s["dlq_codes"].most_common())
        return f"{s['dead']} ({codes})" if s["dead"] else "0"

    def secs(values: Sequence[float]) -> str:
        return f"{pct(values, 50):.1f} / {pct(values, 95):.1f} s" if values else "-"

    rows = [
        ("429s received (share of calls)", lambda s: f"{s['rejected']} ({s['rejected'] / max(1, s['calls']):.1%})"),
        ("retries spent (attempts - 1)", lambda s: str(s["retries"])),
        ("tasks dead-lettered (error codes)", dead),
        ("tasks succeeded", lambda s: f"{s['succeeded']} of {s['tasks']}"
                                      + (f", {s['unfinished']} unfinished" if s["unfinished"] else "")),
        ("throttled (admission refusals, not attempts)", lambda s: str(s["throttled"])),
        (f"calls admitted per {args.window:g} s window while the backlog waited / limit (goal >= 0.9)",
         lambda s: f"**{s['per_window'] / args.rpm:.2f}** ({s['per_window']:.1f} of {args.rpm}, "
                   f"over {s['saturated_s']:.0f} s; max {s['max_in_window']})"),
        (f"priority-9 wait, created -> started, p50 / p95 / max (goal p95 <= one refill, {refill:.1f} s)",
         lambda s: f"{pct(s['urgent_wait'], 50):.1f} / **{pct(s['urgent_wait'], 95):.1f}** / "
                   f"{pct(s['urgent_wait'], 100):.1f} s ({s['urgent_ok']} of {args.urgent} succeeded)"),
        ("  the next call admitted after it arrived, p50 / p95",
         lambda s: f"{pct(s['urgent_next_slot'], 50):.1f} / {pct(s['urgent_next_slot'], 95):.1f} s"),
        ("trickle tenant completion p50 / p95", lambda s: secs(s["trickle_done"])),
        ("bursty tenant completion p50 / p95 (priority 1-5)", lambda s: secs(s["bulk_done"])),
        ("wall time", lambda s: f"{s['wall']:.0f} s"),
    ]
    lines = [f"| | {' | '.join(sides)} |", "|---|" + "---|" * len(sides)]
    lines += [f"| {name} | {both(fn)} |" for name, fn in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bulk", type=int, default=500, help="the bursty tenant's tasks, all at once")
    parser.add_argument("--trickle", type=int, default=30)
    parser.add_argument("--trickle-every", type=float, default=1.5)
    parser.add_argument("--urgent", type=int, default=10, help="priority-9 tasks submitted while the backlog waits")
    parser.add_argument("--urgent-from", type=float, default=6.0)
    parser.add_argument("--urgent-every", type=float, default=4.0)
    parser.add_argument("--rpm", type=int, default=100, help="the account's requests per window")
    parser.add_argument("--tpm", type=int, default=10_000, help="the account's tokens per window")
    parser.add_argument("--window", type=float, default=10.0, help="seconds in the limits' 'minute'")
    parser.add_argument("--latency-min", type=float, default=1.0)
    parser.add_argument("--latency-max", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=600, help="per side, after the last submission")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--only", choices=["without", "with"], help="run one side")
    parser.add_argument("--timeline", action="store_true", help="print the calls admitted in each second")
    args = parser.parse_args()
    sides: dict[str, dict[str, Any]] = {}
    with bench_valkey("aii-bench-quota-") as (tmp, base):
        for db, (name, quotas) in enumerate([("without limiter", False), ("with limiter", True)], start=1):
            if args.only and not name.startswith(args.only + " "):
                continue
            sides[name] = run_side(f"{base}/{db}", quotas, args, tmp)
            print(f"{name}: done in {sides[name]['wall']:.0f} s (logs in {tmp})", flush=True)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"workload: {args.bulk} bulk tasks (priority 1-5) at once, {args.trickle} trickle tasks every "
          f"{args.trickle_every:g} s, {args.urgent} priority-9 every {args.urgent_every:g} s from "
          f"{args.urgent_from:g} s; {args.workers} workers x {args.concurrency} threads; provider limit "
          f"{args.rpm} requests / {args.tpm} tokens per {args.window:g} s, calls {args.latency_min:g}-"
          f"{args.latency_max:g} s")
    print(table(sides, args))
    if args.timeline:
        for name, side in sides.items():
            per_s = Counter(int(a) for a in side["timeline"])
            print(f"{name}: calls admitted per second from the first submission (backlog until "
                  f"{side['saturated_end_s']:.1f} s): " + " ".join(f"{t}:{per_s[t]}" for t in sorted(per_s)))


if __name__ == "__main__":
    main()
