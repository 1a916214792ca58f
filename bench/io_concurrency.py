"""I/O concurrency: how close one worker process gets to `concurrency / latency` when every
provider call takes `latency` seconds, side by side with raw Celery on the same broker and pool.

Both get N tasks queued before their worker starts (so the submitter is not measured), one
worker process, `-c concurrency`, on this 2-core machine. Throughput is N over the span from
the first call's start to the last one's end; efficiency is throughput divided by the ideal
`concurrency / latency` (400 tasks/s at 200 x 0.5 s, 100 tasks/s at 1,000 x 10 s). Raw Celery
runs a task that sleeps `latency`; aiintegration runs the full path (claim, route, breaker,
quota, the `local` provider with latency_ms = latency, completion, events) for each.

Per side it also reports the worker process's peak resident memory (VmHWM) and what that is
per 1,000 calls in flight, the same worker's RSS when idle (started on an empty database),
and CPU seconds per task of the worker and of Valkey (utime + stime from /proc).

    .venv/bin/python bench/io_concurrency.py [--tasks 2000] [--concurrency 200] [--latency 0.5] [--pool threads]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import bench_valkey, start_worker, stop  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_s() -> float:
    """CPU seconds every process on the machine spent so far (all cores, from /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in
                                                               Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


class Meter:
    """CPU of the worker, Valkey, this process and everything else over one run."""

    def __init__(self, valkey_pid: int) -> None:
        self.valkey_pid = valkey_pid
        self.t0, self.machine0, self.valkey0, self.own0 = (time.monotonic(), machine_busy_s(), cpu_s(valkey_pid),
                                                           cpu_s(os.getpid()))

    def side(self, worker_pid: int, n: int) -> Side:
        worker, valkey, own = cpu_s(worker_pid), cpu_s(self.valkey_pid) - self.valkey0, cpu_s(os.getpid()) - self.own0
        others = machine_busy_s() - self.machine0 - worker - valkey - own
        return Side(peak_rss_mib=status_kib(worker_pid, "VmHWM") / 1024, worker_cpu_ms=worker / n * 1000,
                    valkey_cpu_ms=valkey / n * 1000, threads=status_kib(worker_pid, "Threads"),
                    others_cores=max(0.0, others) / (time.monotonic() - self.t0))


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def valkey_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


@dataclass
class Side:
    rate: float = 0.0  # tasks/s
    peak_rss_mib: float = 0.0
    idle_rss_mib: float = 0.0
    worker_cpu_ms: float = 0.0  # per task
    valkey_cpu_ms: float = 0.0  # per task
    threads: int = 0  # the worker's OS threads at the end
    others_cores: float = 0.0  # CPU used meanwhile by processes outside this run (other work on the machine)


def idle_rss(app: str, url: str, concurrency: int, log: Path, pool: str) -> float:
    """RSS of the same worker command once it is up with nothing to do (MiB)."""
    from tests.support import celery_for

    worker = start_worker(app, url, concurrency, log, wait=False, pool=pool)
    probe = celery_for(url)  # a fresh app: the benches' apps keep pools on other databases
    try:
        end = time.monotonic() + 60
        while not probe.control.ping(timeout=0.5):
            if time.monotonic() > end or worker.poll() is not None:
                raise RuntimeError(f"worker {app} did not start: {log.read_text()[-2000:]}")
        time.sleep(1.0)
        return status_kib(worker.pid, "VmRSS") / 1024
    finally:
        stop(worker)


def run_raw(url: str, n: int, concurrency: int, latency: float, log: Path, pool: str, valkey_pid: int) -> Side:
    from bench.rawapp import app

    app.conf.broker_url = app.conf.result_backend = url
    results = [app.send_task("bench.sleep", args=[latency]) for _ in range(n)]
    meter = Meter(valkey_pid)
    worker = start_worker("bench.rawapp", url, concurrency, log, wait=False, pool=pool)
    try:
        spans = [r.get(timeout=600) for r in results]
        side = meter.side(worker.pid, n)
    finally:
        stop(worker)
    side.rate = n / (max(end for _, end in spans) - min(start for start, _ in spans))
    return side


def run_system(url: str, n: int, concurrency: int, latency: float, log: Path, pool: str, valkey_pid: int) -> Side:
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
    meter = Meter(valkey_pid)
    worker = start_worker("aiintegration.celery_app", url, concurrency, log, latency_ms=latency * 1000, wait=False,
                          pool=pool)
    try:
        deadline = time.monotonic() + 600
        while ctx.tasks.count("succeeded") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not finished in 600 s: {ctx.tasks.count('succeeded')}/{n}")
            time.sleep(0.1)
        side = meter.side(worker.pid, n)
    finally:
        stop(worker)
    records = ctx.tasks.get_many(ids)
    starts = [r.started_at for r in records if r and r.started_at]
    ends = [r.finished_at for r in records if r and r.finished_at]
    side.rate = n / (max(ends) - min(starts))
    return side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per provider call")
    parser.add_argument("--pool", default="threads", choices=["threads", "gevent"])
    parser.add_argument("--only", choices=["raw", "system"], help="run one side")
    args = parser.parse_args()
    sides: dict[str, Side] = {}
    with bench_valkey("aii-bench-io-") as (tmp, base):
        pid = valkey_pid(base)
        if args.only != "system":
            sides["raw"] = run_raw(f"{base}/1", args.tasks, args.concurrency, args.latency, tmp / "raw.log",
                                   args.pool, pid)
            sides["raw"].idle_rss_mib = idle_rss("bench.rawapp", f"{base}/3", args.concurrency, tmp / "raw-idle.log",
                                                 args.pool)
        if args.only != "raw":
            sides["system"] = run_system(f"{base}/2", args.tasks, args.concurrency, args.latency, tmp / "sys.log",
                                         args.pool, pid)
            sides["system"].idle_rss_mib = idle_rss("aiintegration.celery_app", f"{base}/4", args.concurrency,
                                                    tmp / "sys-idle.log", args.pool)
    ideal = args.concurrency / args.latency
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"tasks={args.tasks} pool={args.pool} concurrency={args.concurrency} latency={args.latency}s "
          f"ideal={ideal:.0f} tasks/s (one worker process)")
    names = {"raw": "raw celery sleep     ", "system": "aiintegration (local)"}
    for key, side in sides.items():
        per_k = (side.peak_rss_mib - side.idle_rss_mib) * 1000 / args.concurrency
        print(f"{names[key]}: {side.rate:7.1f} tasks/s   efficiency {side.rate / ideal:.2f}   "
              f"RSS peak {side.peak_rss_mib:6.1f} MiB (idle {side.idle_rss_mib:5.1f}, +{per_k:5.1f} MiB per 1,000 "
              f"in flight)   CPU/task worker {side.worker_cpu_ms:5.2f} ms, valkey {side.valkey_cpu_ms:5.2f} ms   "
              f"threads {side.threads}   others on the machine {side.others_cores:.1f} cores")
    if len(sides) == 2:
        print(f"ratio system/raw     : {sides['system'].rate / sides['raw'].rate:7.2f}")


if __name__ == "__main__":
    main()
