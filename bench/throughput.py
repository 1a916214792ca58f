"""End-to-end throughput of aiintegration versus raw Celery, side by side in one run.

Both use one fresh embedded Valkey (separate databases), the same celeryconfig (acks_late,
prefetch 1, priority lists, events on), one worker process with the same pool and
concurrency. Raw: send N no-op tasks, wait for every result. This system: N
`create_generation_task` calls (record + event + message, as POST /v1/tasks does) on the
zero-latency `local` provider, wait until all N records are `succeeded`.

    .venv/bin/python bench/throughput.py [--tasks 2000] [--concurrency 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def bench_valkey(prefix: str) -> Iterator[tuple[Path, str]]:
    """A fresh embedded Valkey (no AOF) and a scratch directory: (tmp, redis://host:port).
    REDIS_URL points at its database 1 before celeryconfig is first imported."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"  # replaced below; celeryconfig reads it at import
    from aiintegration.embedded import EmbeddedValkey

    with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
        base = f"redis://127.0.0.1:{valkey.port}"
        os.environ["REDIS_URL"] = f"{base}/1"
        yield tmp, base


def start_worker(app: str, url: str, concurrency: int, log: Path, *, latency_ms: float = 0,
                 wait: bool = True, pool: str = "threads") -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local", "AII_LOCAL_LATENCY_MS": str(latency_ms),
           "AII_LOG_FORMAT": "text"}
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c",
                             str(concurrency), "-E", "-l", "WARNING", "--without-gossip", "--without-mingle",
                             "-n", f"{app}@bench"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if not wait:  # the caller watches its tasks instead
        return proc
    from bench.rawapp import app as probe  # same transport options as the workers

    probe.conf.broker_url = url
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if probe.control.ping(timeout=0.5):
            return proc
    proc.kill()
    raise RuntimeError(f"worker {app} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_raw(url: str, n: int) -> float:
    from bench.rawapp import app

    app.conf.broker_url = app.conf.result_backend = url
    t0 = time.perf_counter()
    results = [app.send_task("bench.noop", args=[i]) for i in range(n)]
    for r in results:
        r.get(timeout=120)
    return n / (time.perf_counter() - t0)


def run_system(url: str, n: int) -> tuple[float, float]:
    from aiintegration.commands.context import Context
    from aiintegration.commands.create import create_generation_task
    from aiintegration.config import Settings
    from aiintegration.domain.states import to_broker_priority
    from tests.support import celery_for

    app = celery_for(url)

    class Publisher:
        def enqueue_process_task(self, task_id: str, priority: int, countdown: float | None = None, *,
                                 attempt: int = 1) -> None:
            app.send_task("aiintegration.process_task", kwargs={"task_id": task_id},
                          priority=to_broker_priority(priority), countdown=countdown or None)

        def dispatch(self, name: str, kwargs: dict) -> None:
            app.send_task(name, kwargs=kwargs)

    settings = Settings.from_env({**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local"})
    ctx = Context.build(settings, Publisher())
    before = ctx.tasks.count("succeeded")
    t0 = time.perf_counter()
    for i in range(n):
        create_generation_task(ctx, task_type="text_generation", request_content={"prompt": f"bench {i}"},
                               requested_by="bench")
    submit_rate = n / (time.perf_counter() - t0)
    deadline = time.monotonic() + 300
    while ctx.tasks.count("succeeded") - before < n:
        if time.monotonic() > deadline:
            raise RuntimeError("this system did not finish in 300 s")
        time.sleep(0.01)
    return n / (time.perf_counter() - t0), submit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with bench_valkey("aii-bench-") as (tmp, base):
        raw_w = start_worker("bench.rawapp", f"{base}/1", args.concurrency, tmp / "raw.log")
        sys_w = start_worker("aiintegration.celery_app", f"{base}/2", args.concurrency, tmp / "sys.log")
        raw, sys_, submit = [], [], []
        try:
            run_raw(f"{base}/1", 100)  # warm both paths up
            run_system(f"{base}/2", 100)
            for _ in range(args.rounds):
                raw.append(run_raw(f"{base}/1", args.tasks))
                rate, sub = run_system(f"{base}/2", args.tasks)
                sys_.append(rate)
                submit.append(sub)
        finally:
            stop(raw_w)
            stop(sys_w)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"tasks={args.tasks} pool=threads concurrency={args.concurrency} rounds={args.rounds} (best of rounds)")
    print(f"raw celery no-op     : {max(raw):8.0f} tasks/s   (all rounds: {', '.join(f'{r:.0f}' for r in raw)})")
    print(f"aiintegration (local): {max(sys_):8.0f} tasks/s   (all rounds: {', '.join(f'{r:.0f}' for r in sys_)})")
    print(f"submit path only     : {max(submit):8.0f} creates/s")
    print(f"ratio system/raw     : {max(sys_) / max(raw):8.2f}   (goal >= 0.7)")


if __name__ == "__main__":
    main()
