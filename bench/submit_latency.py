"""Submit path under load: `POST /v1/tasks` against the web app under gunicorn (gevent
workers, as in the Procfile) at a fixed arrival rate, open loop.

Each request is scheduled at `t0 + i / rate` and its latency counts from that scheduled
moment, so a slow server cannot hide its backlog (no coordinated omission). Every request
really creates a task (record, event, broker message); no worker runs, so tasks just queue.
The load generator (asyncio, raw keep-alive HTTP/1.1 connections, one thread) shares the machine's 2 cores with gunicorn
and Valkey. `--find-max` steps the rate up and reports the highest one whose p99 stays
under 25 ms without errors.

    .venv/bin/python bench/submit_latency.py [--rate 200] [--seconds 30] [--web-workers 2]
    .venv/bin/python bench/submit_latency.py --find-max [--seconds 10]
    .venv/bin/python bench/submit_latency.py --tenants [--tracing]   # client-role token of a tenant; spans on
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sse_latency import TOKEN, cpu_seconds, gunicorn, percentile, spawn, stop, wait_http, wait_log  # noqa: E402

BODY = {"task_type": "text_generation", "request_content": {"prompt": "submit path benchmark"},
        "requested_by": "bench"}


REQUEST = None  # bytes of one POST, built once per run in main()


async def connection(host: str, port: int, queue: asyncio.Queue[float | None], latencies: list[float],
                     errors: list[str]) -> None:
    """One keep-alive HTTP/1.1 connection taking scheduled requests off `queue` until None.

    A hand-written client on purpose: httpx spends ~2.5 ms of CPU per request, which on two
    cores would steal the server's CPU and measure the load generator instead."""
    reader = writer = None
    while (scheduled := await queue.get()) is not None:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None and REQUEST is not None
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            if status == 202:
                latencies.append((time.perf_counter() - scheduled) * 1000)
            else:
                errors.append(f"HTTP {status}")
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors.append(type(exc).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def load(host: str, port: int, rate: float, seconds: float, connections: int = 64
               ) -> tuple[list[float], list[str]]:
    """Open loop: request i is due at t0 + i/rate whether or not earlier ones have answered;
    latency counts from that moment (a backlog shows up as latency, not as a lower rate)."""
    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    workers = [asyncio.create_task(connection(host, port, queue, latencies, errors)) for _ in range(connections)]
    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(scheduled)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, errors


def report(rate: float, latencies: list[float], errors: list[str], server_cpu_s: float) -> str:
    if not latencies:
        return f"rate {rate:5.0f}/s: every request failed ({collections.Counter(errors).most_common(3)})"
    answered = len(latencies) + len(errors)
    failed = f" {dict(collections.Counter(errors))}" if errors else ""
    return (f"rate {rate:5.0f}/s: n={len(latencies)} errors={len(errors)}{failed} "
            f"p50 {statistics.median(latencies):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms  "
            f"p99 {percentile(latencies, 0.99):6.1f} ms  max {max(latencies):7.1f} ms  "
            f"server CPU {server_cpu_s / answered * 1000:.2f} ms/request")


def main() -> None:
    global REQUEST
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--find-max", action="store_true", help="step the rate up until p99 >= 25 ms")
    parser.add_argument("--tenants", action="store_true",
                        help="tokens as a JSON table (two tenants and an operator); requests use a client's token")
    parser.add_argument("--tracing", action="store_true", help="OpenTelemetry on (spans written to a file)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-submit-"))
    from aiintegration.embedded import EmbeddedValkey, free_port

    lines, best = [], None
    with EmbeddedValkey(tmp / "valkey", appendonly=True) as valkey:  # AOF on, as `make run` has it
        port = free_port()
        body = json.dumps(BODY).encode()
        REQUEST = (f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        tokens = TOKEN if not args.tenants else json.dumps({
            TOKEN: {"name": "billing", "role": "client"}, "other-tenant-token-0123": {"name": "search", "role": "client"},
            "sha256:" + "0" * 64: {"name": "platform", "role": "operator"}})
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "AII_PROVIDERS": "local",
               "AII_API_TOKENS": tokens, "AII_LOG_FORMAT": "text"}
        if args.tracing:
            env["AII_OTEL_FILE"] = str(tmp / "spans.jsonl")
        web = spawn(gunicorn(port, args.web_workers, tmp), env, tmp / "web.log")
        try:
            wait_log(web, tmp / "web.log", "Booting worker")
            wait_http(f"http://127.0.0.1:{port}/healthz", tmp / "web.log")
            asyncio.run(load("127.0.0.1", port, 50, 2))  # warm up: imports, connection pools
            rates = [200, 300, 400, 500, 600, 800, 1000] if args.find_max else [args.rate]
            for rate in rates:
                cpu0 = cpu_seconds(web.pid)
                latencies, errors = asyncio.run(load("127.0.0.1", port, rate, args.seconds))
                lines.append(report(rate, latencies, errors, cpu_seconds(web.pid) - cpu0))
                print(lines[-1], flush=True)
                if latencies and not errors and percentile(latencies, 0.99) < 25:
                    best = rate
                elif args.find_max:
                    break
        finally:
            stop(web)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"gunicorn as in the Procfile (gevent x{args.web_workers}, keep-alive 75 s, access log), Valkey with AOF (everysec), no worker (tasks queue), "
          f"{os.cpu_count()} CPUs shared by server, Valkey and load generator; "
          f"tokens: {'a JSON table, client role' if args.tenants else 'a bare operator token'}; "
          f"tracing: {'on (spans to a file)' if args.tracing else 'off'}")
    for line in lines:
        print(line)
    if args.find_max:
        print(f"highest rate with p99 < 25 ms and no errors: {best or 'none'} req/s (steps of {args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
