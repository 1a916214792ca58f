"""Submit path under load: `POST /v1/tasks` against the web app under gunicorn (gevent
workers, as in the Procfile) at a fixed arrival rate, open loop.

Each request is scheduled at `t0 + i / rate` and its latency counts from that scheduled
moment, so a slow server cannot hide its backlog (no coordinated omission). Every request
really creates a task (record, event, broker message); no worker runs, so tasks just queue.
The load generator (asyncio, raw keep-alive HTTP/1.1 connections, one thread) shares the machine's 2 cores with gunicorn
and Valkey. `--find-max` steps the rate up and reports the highest one whose p99 stays
under 25 ms without errors; `--closed-loop` sends back to back on 64 connections instead
and reports the rate the server sustains. Each line also gives the server's (gunicorn's)
and Valkey's CPU and the Redis commands per request (`INFO commandstats`).

    .venv/bin/python bench/submit_latency.py [--rate 200] [--seconds 30] [--web-workers 2]
    .venv/bin/python bench/submit_latency.py --find-max [--seconds 10] [--rates 200,300,...]
    .venv/bin/python bench/submit_latency.py --tenants [--tracing]   # client-role token of a tenant; spans on
    .venv/bin/python bench/submit_latency.py --find-max --web-workers 1,2,4 --rounds 2   (scale-out)
    .venv/bin/python bench/submit_latency.py --closed-loop --web-workers 1,2,4 --rounds 3 --seconds 10
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
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiintegration.embedded import EmbeddedValkey, free_port  # noqa: E402
from bench import redis_counts as rc  # noqa: E402
from bench.sse_latency import TOKEN, gunicorn, percentile, spawn, stop, wait_http, wait_log  # noqa: E402

BODY = {"task_type": "text_generation", "request_content": {"prompt": "submit path benchmark"},
        "requested_by": "bench"}


REQUEST = None  # bytes of one POST, built once per run in main()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One POST on a keep-alive connection; its HTTP status."""
    assert REQUEST is not None
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


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
            assert reader is not None
            status = await exchange(reader, writer)
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


async def saturate(host: str, port: int, seconds: float, connections: int = 64) -> tuple[list[float], list[str]]:
    """Closed loop: each connection sends its next request as soon as the last one answered,
    for `seconds`. The answered count over `seconds` is the rate the server sustains (with the
    load generator on the same cores); latencies count from each send."""
    latencies: list[float] = []
    errors: list[str] = []
    end = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while (sent := time.perf_counter()) < end:
            try:
                status = await exchange(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                errors.append(type(exc).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status == 202:
                latencies.append((time.perf_counter() - sent) * 1000)
            else:
                errors.append(f"HTTP {status}")
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return latencies, errors


def report(rate: float, latencies: list[float], errors: list[str], server_cpu_s: float,
           valkey_cpu_s: float = 0.0, commands: int = 0) -> str:
    if not latencies:
        return f"rate {rate:5.0f}/s: every request failed ({collections.Counter(errors).most_common(3)})"
    answered = len(latencies) + len(errors)
    failed = f" {dict(collections.Counter(errors))}" if errors else ""
    line = (f"rate {rate:5.0f}/s: n={len(latencies)} errors={len(errors)}{failed} "
            f"p50 {statistics.median(latencies):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms  "
            f"p99 {percentile(latencies, 0.99):6.1f} ms  max {max(latencies):7.1f} ms  "
            f"server CPU {server_cpu_s / answered * 1000:.2f} ms/request")
    if commands:
        line += f"  Valkey CPU {valkey_cpu_s / answered * 1000:.3f} ms, {commands / answered:.1f} commands/request"
    return line


def run_web(valkey: Any, tmp: Path, web_workers: int, rates: list[float], args: argparse.Namespace, tokens: str
            ) -> tuple[list[str], float | None]:
    """One gunicorn with `web_workers` gevent workers: the rates in turn (stopping at the first
    one over the p99 bound with --find-max), or one closed-loop run; its report lines and the
    best rate under the bound (the sustained rate, closed loop)."""
    port = free_port()
    body = json.dumps(BODY).encode()
    global REQUEST
    REQUEST = (f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "AII_PROVIDERS": "local",
           "AII_API_TOKENS": tokens, "AII_LOG_FORMAT": "text"}
    if args.tracing:
        env["AII_OTEL_FILE"] = str(tmp / f"spans-{port}.jsonl")
    seconds, find_max, closed_loop = args.seconds, args.find_max, args.closed_loop
    log = tmp / f"web-{web_workers}-{port}.log"
    web = spawn(gunicorn(port, web_workers, tmp), env, log)
    admin = redis.Redis(port=valkey.port)
    lines, best = [], None
    try:
        wait_log(web, log, "Booting worker")
        wait_http(f"http://127.0.0.1:{port}/healthz", log)
        asyncio.run(load("127.0.0.1", port, 50, 2))  # warm up: imports, connection pools
        for rate in rates if not closed_loop else [0.0]:
            with rc.measured(admin, {"valkey": [valkey.proc.pid], "client": [os.getpid()], "web": [-web.pid]}) as cost:
                if closed_loop:
                    latencies, errors = asyncio.run(saturate("127.0.0.1", port, seconds))
                    rate = best = len(latencies) / seconds
                else:
                    latencies, errors = asyncio.run(load("127.0.0.1", port, rate, seconds))
            lines.append(report(rate, latencies, errors, cost.cpu["web"], cost.cpu["valkey"], sum(cost.calls.values()))
                         + f"  load generator CPU {cost.cpu['client'] / max(1, len(latencies)) * 1000:.2f} ms"
                         + f"  | others {cost.others:.2f} cores, load {rc.loadavg()}")
            if closed_loop:
                break
            print(f"web workers {web_workers}: {lines[-1]}", flush=True)
            if latencies and not errors and percentile(latencies, 0.99) < 25:
                best = rate
            elif find_max:
                break
    finally:
        stop(web)
    return lines, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--web-workers", default="2", help="gevent workers; a list (1,2,4) runs each in turn")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the list of web-worker counts (order reversed "
                        "every other round)")
    parser.add_argument("--find-max", action="store_true", help="step the rate up until p99 >= 25 ms")
    parser.add_argument("--rates", default="200,300,400,500,600,800,1000", help="the steps of --find-max")
    parser.add_argument("--closed-loop", action="store_true", help="64 connections back to back for --seconds: "
                        "the rate the server sustains")
    parser.add_argument("--tenants", action="store_true",
                        help="tokens as a JSON table (two tenants and an operator); requests use a client's token")
    parser.add_argument("--tracing", action="store_true", help="OpenTelemetry on (spans written to a file)")
    args = parser.parse_args()
    counts = [int(w) for w in args.web_workers.split(",")]
    rates = [float(r) for r in args.rates.split(",")] if args.find_max else [args.rate]

    tokens = TOKEN if not args.tenants else json.dumps({
        TOKEN: {"name": "billing", "role": "client"}, "other-tenant-token-0123": {"name": "search", "role": "client"},
        "sha256:" + "0" * 64: {"name": "platform", "role": "operator"}})
    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-submit-"))
    results: list[tuple[int, list[str], float | None]] = []
    with EmbeddedValkey(tmp / "valkey", appendonly=True) as valkey:  # AOF on, as `make run` has it
        for r in range(args.rounds):
            for web_workers in counts if r % 2 == 0 else counts[::-1]:
                lines, best = run_web(valkey, tmp, web_workers, rates, args, tokens)
                results.append((web_workers, lines, best))
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"gunicorn as in the Procfile (gevent, keep-alive 75 s, access log), Valkey with AOF (everysec), no worker (tasks queue), "
          f"{os.cpu_count()} CPUs shared by server, Valkey and load generator; "
          f"tokens: {'a JSON table, client role' if args.tenants else 'a bare operator token'}; "
          f"tracing: {'on (spans to a file)' if args.tracing else 'off'}")
    for web_workers, lines, best in results:
        print(f"web workers {web_workers}:")
        for line in lines:
            print(f"  {line}")
        if args.closed_loop:
            print(f"  sustained: {best:.0f} req/s (closed loop, 64 connections, {args.seconds:.0f} s)")
        elif args.find_max:
            print(f"  highest rate with p99 < 25 ms and no errors: {f'{best:.0f}' if best else 'none'} req/s "
                  f"(steps of {args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
