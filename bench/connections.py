"""Redis connections per process of a running stack, idle and at peak load: what a Redis or
Valkey `maxclients` (and a managed Redis's connection limit) must hold for N machines.

Starts the Procfile's four processes on one embedded Valkey (gunicorn with gevent workers,
a threads-pool worker, beat, Flower), then loads them: `--tasks` submissions over HTTP on
`--posts` concurrent connections, every provider call slow enough (`--latency-ms`) that the
worker's threads are all busy at once, and `--streams` SSE feeds held open. `CLIENT LIST`
is sampled throughout; each connection is traced to its process through /proc (its local
port → socket inode → the process holding it).

    .venv/bin/python bench/connections.py [--web-workers 2] [--concurrency 64] [--streams 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiintegration.embedded import EmbeddedValkey, free_port  # noqa: E402
from bench import redis_counts as rc  # noqa: E402
from bench.sse_latency import TOKEN, gunicorn, spawn, stop, wait_http, wait_log  # noqa: E402

HOLD_S = 6.0


def socket_owners(server_port: int) -> dict[int, int]:
    """Local TCP port → pid of the process holding a socket connected to `server_port`."""
    inode_pid = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inode_pid[int(target[8:-1])] = int(proc.name)
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            port, remote, inode = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), int(fields[9])
            if remote == server_port and inode in inode_pid:
                owners[port] = inode_pid[inode]
    return owners


def connections_by_pid(admin: redis.Redis) -> collections.Counter[int]:
    owners = socket_owners(admin.connection_pool.connection_kwargs["port"])
    counts: collections.Counter[int] = collections.Counter()
    for client in admin.client_list():
        port = int(client["addr"].rsplit(":", 1)[1])
        counts[owners.get(port, -1)] += 1
    counts[os.getpid()] -= 1  # the admin connection asking
    return +counts


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


async def burst(port: int, n: int, parallel: int) -> list[str]:
    """n POST /v1/tasks on `parallel` connections at once; the created ids."""
    body = json.dumps({"task_type": "text_generation", "request_content": {"prompt": "connections"},
                       "requested_by": "bench"}).encode()
    request = (f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    ids: list[str] = []

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            ids.append(json.loads(await reader.readexactly(length))["id"])
        writer.close()

    await asyncio.gather(*(one(n // parallel) for _ in range(parallel)))
    return ids


async def hold_streams(port: int, ids: list[str], seconds: float, admin: redis.Redis, valkey_pid: int) -> rc.Cost:
    """An SSE feed per id, held open for `seconds` (the tasks are still queued: each feed
    waits); what Redis did in the last `seconds` - 1 of it, every worker thread in a call."""
    writers = []
    for task_id in ids:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/tasks/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        writers.append((reader, writer))
    await asyncio.sleep(1)
    with rc.measured(admin, {"valkey": [valkey_pid]}) as cost:
        await asyncio.sleep(seconds - 1)
    for _, writer in writers:
        writer.close()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="worker threads (the Procfile's default)")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--posts", type=int, default=100, help="concurrent POST connections")
    parser.add_argument("--streams", type=int, default=50, help="SSE feeds held open")
    parser.add_argument("--latency-ms", type=float, default=2000, help="each provider call")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aii-bench-conn-"))
    with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
        admin = redis.Redis(port=valkey.port)
        port, flower_port = free_port(), free_port()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "AII_PROVIDERS": "local",
               "AII_API_TOKENS": TOKEN, "AII_LOG_FORMAT": "text", "AII_LOCAL_LATENCY_MS": str(args.latency_ms),
               "AII_PENDING_INTERVAL_S": "2"}  # so beat has sent (and connected) before the count
        celery = [sys.executable, "-m", "celery", "-A", "aiintegration.celery_app"]
        procs = {
            "web": spawn(gunicorn(port, args.web_workers, tmp), env, tmp / "web.log"),
            "worker": spawn([*celery, "worker", "-P", "threads", "-c", str(args.concurrency), "-Q", "celery,webhooks",
                             "-E", "-l", "INFO", "-n", "conn@%h"], env, tmp / "worker.log"),
            "beat": spawn([*celery, "beat", "-l", "INFO", "-s", str(tmp / "beat-schedule")], env, tmp / "beat.log"),
            "flower": spawn([*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1",
                             "--basic-auth=admin:bench"], env, tmp / "flower.log"),
        }
        try:
            wait_log(procs["worker"], tmp / "worker.log", "ready.")
            wait_http(f"http://127.0.0.1:{port}/readyz", tmp / "web.log")
            wait_log(procs["flower"], tmp / "flower.log", "Visit me at")
            time.sleep(5)  # beat's first ticks, Flower's first polls
            kind = {proc.pid: name for name, proc in procs.items()}
            for pid in children(procs["web"].pid):
                kind[pid] = "web worker"
            idle = connections_by_pid(admin)
            peak: collections.Counter[int] = collections.Counter()

            held: list[rc.Cost] = []

            async def load() -> None:
                ids = await burst(port, args.tasks, args.posts)
                held.append(await hold_streams(port, ids[-args.streams:], HOLD_S, admin, valkey.proc.pid))

            async def sample(task: asyncio.Task[None]) -> None:
                while not task.done():
                    for pid, n in connections_by_pid(admin).items():
                        peak[pid] = max(peak[pid], n)
                    await asyncio.sleep(0.2)

            async def run() -> None:
                task = asyncio.create_task(load())
                await asyncio.gather(task, sample(task))

            t0 = time.perf_counter()
            asyncio.run(run())
            seconds = time.perf_counter() - t0
            busy = int(admin.info("stats").get("total_connections_received", 0))
        finally:
            for proc in procs.values():
                stop(proc)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"web: gunicorn gevent x{args.web_workers}; worker: threads -c {args.concurrency}; beat; Flower; "
          f"load: {args.tasks} POSTs on {args.posts} connections, provider calls {args.latency_ms:.0f} ms, "
          f"{args.streams} SSE feeds held {HOLD_S:.0f} s ({seconds:.1f} s in all); {busy} connections accepted by Valkey in the run")
    cost, hold = held[0], HOLD_S - 1
    print(f"while every worker thread was in a provider call and the feeds waited ({hold:.0f} s): "
          f"{sum(cost.calls.values()) / hold:.0f} commands/s, Valkey at {cost.cpu['valkey'] / hold:.3f} of a core; "
          + ", ".join(f"{c} {n / hold:.0f}/s" for c, n in cost.calls.most_common(6)))
    print("Redis connections per process (unmatched: closed before it could be traced)")
    print(f"{'process':12s} {'pid':>8s} {'idle':>6s} {'peak':>6s}")
    rows = sorted(set(idle) | set(peak), key=lambda pid: (kind.get(pid, "zz"), pid))
    for pid in rows:
        name = kind.get(pid, "bench" if pid == os.getpid() else "other" if pid > 0 else "unmatched")
        print(f"{name:12s} {pid:8d} {idle.get(pid, 0):6d} {peak.get(pid, 0):6d}")
    print(f"{'total':12s} {'':8s} {sum(idle.values()):6d} {sum(peak.values()):6d}   (peak: the sum of each one's highest)")


if __name__ == "__main__":
    main()
