"""Chunk → SSE client latency with many concurrent streaming chats.

Every part is the real one, each in its own process: a fresh embedded Valkey; the fake
OpenAI-compatible provider (tests/fake_provider.py) streaming answers whose words are the
wall-clock time each chunk was written to the socket; one Celery worker (threads pool) that
streams through the `openai` SDK and publishes every chunk as a `chat.response.delta` event;
the web app under gunicorn with gevent workers, as in the Procfile. The client (asyncio, one
thread, a raw-socket protocol per feed) opens N chat sessions, subscribes to each session's SSE
feed, sends one message per session at the same moment, and for every delta computes

    latency = time the event's bytes reached the SSE client - time the provider wrote the chunk

so it covers SDK parsing, the worker, Redis (XADD → XREAD BLOCK), gunicorn and HTTP.

    .venv/bin/python bench/sse_latency.py [--chats 50] [--words 40] [--chunk-delay 0.05] [--spread]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.redis_counts import group_cpu  # noqa: E402
from bench.throughput import stop  # noqa: E402  (re-exported for bench/submit_latency.py)

TOKEN = "bench-token-0123456789"


def gunicorn(port: int, workers: int, log_dir: Path) -> list[str]:
    """The Procfile's `web` line (gevent workers, keep-alive, access log) on `port`."""
    return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "--worker-connections", "1000",
            "--keep-alive", "75", "--access-logfile", str(log_dir / "access.log"), "-b", f"127.0.0.1:{port}",
            "aiintegration.web:create_app()"]


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_log(proc: subprocess.Popen[bytes], log: Path, marker: str, timeout_s: float = 60) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        if marker in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{marker!r} never appeared:\n{log.read_text(errors='replace')[-3000:]}")


def wait_http(url: str, log: Path, timeout_s: float = 60) -> None:
    """Until `url` answers 200 (the web app is up, and for /readyz a worker too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200:\n{log.read_text(errors='replace')[-2000:]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SSEFeed(asyncio.Protocol):
    """One SSE feed read off a raw socket, HTTP/1.1 chunked as gunicorn sends a streamed
    response. Events are stamped with the time their bytes reached this process (the start
    of `data_received`), not the time this client got round to parsing them: with 50 feeds
    in one event loop, parsing in turn would add the client's own queueing to the latency.
    (httpx costs ~1 ms of CPU per event, which at 1,000 events/s is half of this machine.)"""

    def __init__(self, on_event: Callable[[str, str, str, float], None]):
        self.on_event, self.buffer, self.body, self.head_done = on_event, b"", b"", False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        received = time.time()
        self.buffer += data
        if not self.head_done:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if b" 200 " not in head.split(b"\r\n", 1)[0] or b"chunked" not in head.lower():
                raise RuntimeError(f"unexpected feed answer: {head[:300]!r}")
            self.head_done = True
        while b"\r\n" in self.buffer:  # de-chunk whatever is complete
            size_line, rest = self.buffer.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break
            self.body += rest[:size]
            self.buffer = rest[size + 2:]
        while b"\n\n" in self.body:
            block, self.body = self.body.split(b"\n\n", 1)
            event = payload = event_id = ""
            for line in block.decode().split("\n"):
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    payload = line[6:]
                elif line.startswith("retry:"):
                    event = "retry"
            self.on_event(event, payload, event_id, received)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Samples:
    """Milliseconds per delta: provider → SSE client (`total`), and its two halves split at
    the XADD (the event's stream id is the Redis server's clock in ms): provider → stored by
    the worker (`to_redis`), stored → SSE client through the web (`from_redis`)."""

    total: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)  # after the third chunk: the stream is flowing
    to_redis: list[float] = field(default_factory=list)
    from_redis: list[float] = field(default_factory=list)


async def post_json(host: str, port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    """One POST on its own connection, raw. The first version used httpx's AsyncClient on the
    same event loop as the feeds: its 50 message POSTs at the start kept that loop busy for
    20-55 ms at a time for about a second (httpcore's pool bookkeeping), and every delta that
    arrived meanwhile was stamped late — the p95 was the client's own lag (bench/RESULTS.md)."""
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + payload)
    try:
        answer = await reader.read()  # until the server closes
    finally:
        writer.close()
    head, _, data = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if not status.startswith(b"2"):
        raise RuntimeError(f"POST {path}: {head[:200]!r} {data[:300]!r}")
    return json.loads(data)


async def one_chat(base: tuple[str, int], go: asyncio.Event, samples: Samples, n: int, delay_s: float) -> int:
    """One session: subscribe, wait for the common start (plus `delay_s`), send, read deltas
    until completed."""
    host, port = base
    session = await post_json(host, port, "/v1/chat/sessions",
                              {"user_id": f"bench-{n}", "item_id": f"item-{n}", "initial_context": "bench"})
    session_id = session["id"]
    loop = asyncio.get_running_loop()
    opened, done = loop.create_future(), loop.create_future()
    deltas = 0

    def on_event(kind: str, payload: str, event_id: str, received: float) -> None:
        nonlocal deltas
        if kind == "retry" and not opened.done():
            opened.set_result(None)  # the feed is open and reading
        elif kind == "chat.response.delta":
            data = json.loads(payload)
            written, stored = float(data["text"].strip()), int(event_id.split("-")[0]) / 1000
            samples.total.append((received - written) * 1000)
            samples.to_redis.append((stored - written) * 1000)
            samples.from_redis.append((received - stored) * 1000)
            if data["seq"] > 3:
                samples.steady.append(samples.total[-1])
            deltas += 1
        elif kind == "chat.response.incomplete" and not done.done():
            done.set_exception(RuntimeError(f"session {session_id}: answer incomplete: {payload}"))
        elif kind == "chat.response.completed" and not done.done():
            done.set_result(None)

    transport, feed = await loop.create_connection(lambda: SSEFeed(on_event), host, port)
    transport.write(f"GET /v1/chat/sessions/{session_id}/events HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode())
    try:
        await opened
        await go.wait()
        await asyncio.sleep(delay_s)
        await post_json(host, port, f"/v1/chat/sessions/{session_id}/messages", {"message": "stream me the time"})
        await asyncio.wait([done, feed.closed], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise RuntimeError(f"session {session_id}: the feed closed before the answer completed")
        done.result()
    finally:
        transport.close()
    return deltas


async def run_clients(base_url: str, chats: int, timeout_s: float, spread_s: float) -> tuple[Samples, list[int], float]:
    """`spread_s` = 0: every chat sends at the same instant, so the provider's chunks for all
    of them come in bursts at the same ticks (the worst case); otherwise the sends are spread
    evenly over `spread_s`."""
    samples = Samples()
    go = asyncio.Event()
    host, port = base_url.removeprefix("http://").split(":")
    jobs = [asyncio.create_task(one_chat((host, int(port)), go, samples, n, spread_s * n / chats))
            for n in range(chats)]
    await asyncio.sleep(1.0)  # every feed subscribed
    t0 = time.perf_counter()
    go.set()
    counts = await asyncio.wait_for(asyncio.gather(*jobs), timeout_s)
    return samples, list(counts), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=50, help="concurrent streaming chats")
    parser.add_argument("--words", type=int, default=40, help="chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--spread", action="store_true",
                        help="spread the chats' starts over one chunk interval instead of starting all at once")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--dump", type=Path, help="write every sample (ms) to this JSON file")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-sse-"))
    print(f"logs: {tmp}", flush=True)
    from aiintegration.embedded import EmbeddedValkey, free_port

    with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
        fake = spawn([sys.executable, "tests/fake_provider.py", "--stamp-words", "--words", str(args.words),
                      "--chunk-delay", str(args.chunk_delay)], {**os.environ, "PYTHONPATH": str(ROOT)},
                     tmp / "fake.log")
        provider_url = wait_log(fake, tmp / "fake.log", "http://").strip().splitlines()[-1]
        port = free_port()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "AII_PROVIDERS": "fake",
               "AII_PROVIDER_FAKE_BASE_URL": provider_url, "AII_PROVIDER_FAKE_MODEL": "fake-model",
               "AII_PROVIDER_FAKE_API_KEY": "sk-bench-not-a-real-key", "AII_API_TOKENS": TOKEN,
               "AII_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"}
        worker = spawn([sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "worker", "-P", "threads",
                        "-c", str(args.chats + 8), "-l", "WARNING", "--without-gossip", "--without-mingle",
                        "-n", "sse-bench@%h"], env, tmp / "worker.log")
        web = spawn(gunicorn(port, args.web_workers, tmp), env, tmp / "web.log")
        try:
            wait_log(web, tmp / "web.log", "Booting worker")
            wait_http(f"http://127.0.0.1:{port}/readyz", tmp / "web.log")
            procs = {"provider": fake, "worker": worker, "web": web}
            before = {name: group_cpu(proc.pid) for name, proc in procs.items()}
            client_before = time.process_time()
            # A first round warms every worker thread, SDK client and connection pool up.
            spread_s = args.chunk_delay if args.spread else 0.0
            asyncio.run(run_clients(f"http://127.0.0.1:{port}", args.chats, args.timeout, spread_s))
            before = {name: group_cpu(proc.pid) for name, proc in procs.items()}
            client_before = time.process_time()
            samples, counts, elapsed = asyncio.run(run_clients(f"http://127.0.0.1:{port}", args.chats, args.timeout,
                                                               spread_s))
            cpu = {name: group_cpu(proc.pid) - before[name] for name, proc in procs.items()}
            cpu["client"] = time.process_time() - client_before
        finally:
            for proc in (web, worker, fake):
                stop(proc)

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"chats={args.chats} chunks/answer={args.words} chunk_delay={args.chunk_delay}s "
          f"web=gunicorn gevent x{args.web_workers} worker=threads -c {args.chats + 8}")
    total = samples.total
    if args.dump:
        args.dump.write_text(json.dumps(samples.__dict__))
    print(f"chat starts       : {'spread over one chunk interval' if args.spread else 'all at once (chunks in bursts)'}")
    print(f"deltas received   : {len(total)} (per chat min {min(counts)}, max {max(counts)}; "
          f"expected {args.words}) in {elapsed:.1f}s")
    print(f"chunk -> SSE p50  : {statistics.median(total):7.1f} ms")
    print(f"chunk -> SSE p95  : {percentile(total, 0.95):7.1f} ms   (goal < 50 ms)")
    print(f"chunk -> SSE p99  : {percentile(total, 0.99):7.1f} ms")
    print(f"chunk -> SSE max  : {max(total):7.1f} ms")
    print(f"after the 3rd chunk of each answer: p50 {statistics.median(samples.steady):.1f} ms, "
          f"p95 {percentile(samples.steady, 0.95):.1f} ms")
    print(f"split at the XADD (ms clock): provider -> Redis p50 {statistics.median(samples.to_redis):.1f} "
          f"p95 {percentile(samples.to_redis, 0.95):.1f} ms; Redis -> SSE client p50 "
          f"{statistics.median(samples.from_redis):.1f} p95 {percentile(samples.from_redis, 0.95):.1f} ms")
    print("CPU seconds during the run: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))


if __name__ == "__main__":
    main()
