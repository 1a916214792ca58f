"""Counting what a benchmark round costs the Redis server: commands from `INFO commandstats`,
the server's CPU from /proc, who sent which command from `MONITOR`, and a probe of how many
commands per second one Valkey primary serves on this machine.

`INFO commandstats` counts every command the server executed, including each `redis.call`
inside a Lua script; `MONITOR` tells the two apart (script calls are shown as `[db lua]`,
right after the EVALSHA that ran them), so a round can be split into round trips sent by
clients and work done inside scripts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pkgutil
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per command so far (`evalsha`, `hset`, `client|setinfo`, …), server-wide."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()})


def calls_between(before: Counter[str], after: Counter[str]) -> Counter[str]:
    """What ran between two snapshots, minus the INFO that took the second one."""
    diff = after.copy()
    diff.subtract(before)
    diff["info"] -= 1
    return +diff  # drops zero (and negative) entries


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat, all cores)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    """The 1-minute load average, as `uptime` prints it."""
    return Path("/proc/loadavg").read_text().split()[0]


def script_names() -> dict[str, str]:
    """sha1 → `module.NAME` of every Lua script defined at module level in aiintegration.store."""
    import aiintegration.store as store

    names = {}
    for info in pkgutil.iter_modules(store.__path__):
        module = importlib.import_module(f"aiintegration.store.{info.name}")
        for attr, value in vars(module).items():
            if isinstance(value, str) and "redis.call" in value:
                names[hashlib.sha1(value.encode()).hexdigest()] = f"{info.name}.{attr}"
    return names


# +1796012970.790293 [2 127.0.0.1:37080] "EVALSHA" "f092a9…" "0"
_LINE = re.compile(rb'^\+[\d.]+ \[(\d+) ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


@dataclass
class Attribution:
    """One database's commands as MONITOR saw them: sent by clients (EVALSHA by script name)
    and run inside scripts (by script, then command)."""

    tasks: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    in_scripts: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def script_calls(self) -> int:
        return sum(self.in_scripts.values())


class Monitor:
    """A MONITOR connection read on a thread while a round runs; `attribution(db)` after."""

    def __init__(self, port: int):
        self.port = port
        self.lines: list[bytes] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        self._sock = socket.create_connection(("127.0.0.1", self.port))
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self._sock.recv(1 << 20):
                buffer += chunk
                *complete, buffer = buffer.split(b"\r\n")
                self.lines.extend(complete)

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # let the last lines arrive
        assert self._sock is not None and self._thread is not None
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)

    def attribution(self, db: int, names: dict[str, str], tasks: int) -> Attribution:
        result = Attribution(tasks)
        script = "?"
        for line in self.lines:
            match = _LINE.match(line)
            if not match or int(match[1]) != db:
                continue
            command = match[3].decode().lower()
            if match[2] == b"lua":
                result.in_scripts[(script, command)] += 1
                continue
            if command == "evalsha" and match[4]:
                script = names.get(match[4].decode(), match[4].decode()[:8])
                result.sent[f"evalsha {script}"] += 1
            else:
                result.sent[command] += 1
        return result


@dataclass
class Probe:
    """What one Valkey primary served on this machine: commands/s with its main thread at
    `busy` of a core, and commands per second of its own CPU (the rate at one full core)."""

    tool: str
    commands_per_s: float
    busy: float

    @property
    def per_core_second(self) -> float:
        return self.commands_per_s / self.busy


def probe(port: int, pid: int, *, requests: int = 200_000, clients: int = 50) -> list[Probe]:
    """redis-benchmark's own way (50 clients, one command in flight each, no pipelining) with
    SET/GET/LPUSH/RPOP/HSET, when `redis-benchmark` or `valkey-benchmark` is on PATH; always also a
    Python probe of the same shape (which measures less: its client is the bottleneck on 2 cores,
    so read its per-core-second figure)."""
    results = []
    tool = shutil.which("valkey-benchmark") or shutil.which("redis-benchmark")
    if tool:
        cpu0, t0 = process_cpu(pid), time.perf_counter()
        out = subprocess.run([tool, "-p", str(port), "-n", str(requests), "-c", str(clients), "-q",
                              "-t", "set,get,lpush,rpop,hset"], capture_output=True, text=True, timeout=300,
                             check=True).stdout
        wall, cpu = time.perf_counter() - t0, process_cpu(pid) - cpu0
        rates = [float(m) for m in re.findall(r"([\d.]+) requests per second", out)]
        done = requests * len(rates)
        results.append(Probe(Path(tool).name, done / wall, cpu / wall))
    results.append(_python_probe(port, pid, clients=clients))
    return results


def _python_probe(port: int, pid: int, *, clients: int, seconds: float = 3.0) -> Probe:
    import asyncio

    async def one(count: list[int], stop: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        commands = (b"*3\r\n$3\r\nSET\r\n$5\r\nprobe\r\n$3\r\nxyz\r\n", b"*2\r\n$3\r\nGET\r\n$5\r\nprobe\r\n")
        i = 0
        while time.perf_counter() < stop:
            writer.write(commands[i % 2])
            await reader.readline()
            if i % 2:
                await reader.readline()  # GET's bulk reply is two lines
            i += 1
        count.append(i)
        writer.close()

    async def run() -> int:
        count: list[int] = []
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(one(count, stop) for _ in range(clients)))
        return sum(count)

    cpu0, t0 = process_cpu(pid), time.perf_counter()
    done = asyncio.run(run())
    wall, cpu = time.perf_counter() - t0, process_cpu(pid) - cpu0
    return Probe("python asyncio", done / wall, cpu / wall)


@dataclass
class Cost:
    """Commands run and CPU seconds per named process group over a `measured` block, and
    `others`: the cores every other process of the machine kept busy meanwhile (other
    people's test suites on a shared machine)."""

    calls: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)
    others: float = 0.0


@contextlib.contextmanager
def measured(client: redis.Redis, pids: dict[str, list[int]]) -> Iterator[Cost]:
    """`pids` may name process groups (`-pgid`) as well as single processes."""
    cost = Cost()
    cpu0 = {name: sum(_cpu(p) for p in group) for name, group in pids.items()}
    machine0, t0 = machine_cpu(), time.perf_counter()
    before = command_calls(client)
    yield cost
    cost.calls = calls_between(before, command_calls(client))
    cost.cpu = {name: sum(_cpu(p) for p in group) - cpu0[name] for name, group in pids.items()}
    cost.others = max(0.0, machine_cpu() - machine0 - sum(cost.cpu.values())) / (time.perf_counter() - t0)


def _cpu(pid: int) -> float:
    """A process's CPU seconds, or a whole process group's for a negative id."""
    return process_cpu(pid) if pid >= 0 else group_cpu(-pid)


def group_cpu(group: int) -> float:
    """User+system CPU seconds of every live process in process group `group` (Linux /proc)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total
