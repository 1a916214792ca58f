"""I/O concurrency: how close one worker process gets to `concurrency / latency` when every
provider call takes 500 ms, side by side with raw Celery on the same broker and pool.

Both get N tasks queued before their worker starts (so the submitter is not measured), one
worker process, threads pool, `-c 200` on this 2-core machine. Throughput is N over the
span from the first call's start to the last one's end; efficiency is throughput divided
by the ideal `concurrency / latency` (400 tasks/s at 200 x 0.5 s). Raw Celery runs a task
that sleeps 0.5 s; aiintegration runs the full path (claim, route, breaker, the `local`
provider with latency_ms=500, completion, events) for each.

    .venv/bin/python bench/io_concurrency.py [--tasks 2000] [--concurrency 200] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import bench_valkey, start_worker, stop  # noqa: E402


def run_raw(url: str, n: int, concurrency: int, latency: float, log: Path, pool: str) -> float:
    from bench.rawapp import app

    app.conf.broker_url = app.conf.result_backend = url
    results = [app.send_task("bench.sleep", args=[latency]) for _ in range(n)]
    worker = start_worker("bench.rawapp", url, concurrency, log, wait=False, pool=pool)
    try:
        spans = [r.get(timeout=600) for r in results]
    finally:
        stop(worker)
    return n / (max(end for _, end in spans) - min(start for start, _ in spans))


def run_system(url: str, n: int, concurrency: int, latency: float, log: Path, pool: str) -> float:
    from aiintegration.celery_app import CeleryPublisher
    from aiintegration.commands.context import Context
    from aiintegration.commands.create import create_generation_task
    from aiintegration.config import Settings
    from tests.support import celery_for

    settings = Settings.from_env({**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local",
                                  "AII_LOCAL_LATENCY_MS": str(latency * 1000)})
    ctx = Context.build(settings, CeleryPublisher(celery_for(url)))
    ids = [create_generation_task(ctx, task_type="text_generation", request_content={"prompt": f"io {i}"},
                                  requested_by="bench")[0] for i in range(n)]
    worker = start_worker("aiintegration.celery_app", url, concurrency, log, latency_ms=latency * 1000, wait=False, pool=pool)
    try:
        deadline = time.monotonic() + 600
        while ctx.tasks.count("succeeded") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not finished in 600 s: {ctx.tasks.count('succeeded')}/{n}")
            time.sleep(0.1)
    finally:
        stop(worker)
    records = ctx.tasks.get_many(ids)
    starts = [r.started_at for r in records if r and r.started_at]
    ends = [r.finished_at for r in records if r and r.finished_at]
    return n / (max(ends) - min(starts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per provider call")
    parser.add_argument("--pool", default="threads", choices=["threads", "gevent"])
    args = parser.parse_args()
    with bench_valkey("aii-bench-io-") as (tmp, base):
        raw = run_raw(f"{base}/1", args.tasks, args.concurrency, args.latency, tmp / "raw.log", args.pool)
        system = run_system(f"{base}/2", args.tasks, args.concurrency, args.latency, tmp / "sys.log", args.pool)
    ideal = args.concurrency / args.latency
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"tasks={args.tasks} pool={args.pool} concurrency={args.concurrency} latency={args.latency}s "
          f"ideal={ideal:.0f} tasks/s (one worker process)")
    print(f"raw celery sleep     : {raw:7.1f} tasks/s   efficiency {raw / ideal:.2f}")
    print(f"aiintegration (local): {system:7.1f} tasks/s   efficiency {system / ideal:.2f}   (goal >= 0.9)")
    print(f"ratio system/raw     : {system / raw:7.2f}")


if __name__ == "__main__":
    main()
