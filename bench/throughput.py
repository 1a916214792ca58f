"""End-to-end throughput of aiintegration versus raw Celery, in alternating paired rounds.

One fresh embedded Valkey (no AOF) for the whole run; raw Celery in database 1, this system
in database 2; the same celeryconfig (acks_late, prefetch 1, priority lists, events on); the
same number of worker processes per side, same pool and concurrency.

- raw: N no-op tasks sent with `send_task`, then every result waited for (a plain Celery user);
- system: N `create_generation_task` commands in this process (record + event + broker
  message, what `POST /v1/tasks` does) on the zero-latency `local` provider, then wait until
  all N records are `succeeded`;
- by-name: N `send_task("aiintegration.create_generation_task", kwargs=...)` from a plain
  Celery client in its own process (bench/plain_client.py: kombu's stock transport, nothing
  of ours), every reply waited for, then all N records `succeeded`;
- raw-by-name: the same plain client sending raw Celery's no-op by name, every result waited for.

The raw and system workers both run celeryconfig (our kombu transport included); the
in-process clients too, the plain clients not. Each round of a path is paired with a round
of the raw path called the same way (system with raw, by-name with raw-by-name), the raw
one first in even rounds and last in odd ones, and the figure is the **median of the
per-pair ratios** with min–max, so one noisy round neither makes nor breaks it. Around every round the script diffs `INFO commandstats`
(commands per task, every command the server ran, those inside Lua scripts included) and the
CPU of Valkey, the workers and the clients. Then, outside the timed rounds: one MONITOR round
per path (round trips sent by clients vs commands run inside each Lua script), and a probe of
how many commands/s one Valkey primary serves here, for the ceiling it implies.

    .venv/bin/python bench/throughput.py [--tasks 2000] [--concurrency 8] [--rounds 5]
        [--paths system,by-name] [--workers 1,2,4] [--monitor-tasks 300] [--no-probe]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_counts as rc  # noqa: E402

RAW_DB, SYSTEM_DB = 1, 2
PATH_DB = {"raw": RAW_DB, "system": SYSTEM_DB, "raw-by-name": RAW_DB, "by-name": SYSTEM_DB}
# Each path of this system is paired with the raw Celery path that is called the same way.
REFERENCE = {"system": "raw", "by-name": "raw-by-name"}


def with_references(paths: list[str]) -> list[str]:
    """Each path after its raw reference: raw, system, raw-by-name, by-name."""
    return [p for path in paths for p in (REFERENCE[path], path)]


@contextlib.contextmanager
def bench_valkey_server(prefix: str) -> Iterator[tuple[Path, Any]]:
    """A fresh embedded Valkey (no AOF) and a scratch directory: (tmp, EmbeddedValkey).
    REDIS_URL points at its database 1 before celeryconfig is first imported."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"  # replaced below; celeryconfig reads it at import
    from aiintegration.embedded import EmbeddedValkey

    with EmbeddedValkey(tmp / "valkey", appendonly=False) as valkey:
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{valkey.port}/1"
        yield tmp, valkey


@contextlib.contextmanager
def bench_valkey(prefix: str) -> Iterator[tuple[Path, str]]:
    """(tmp, redis://host:port) of a fresh embedded Valkey, as above."""
    with bench_valkey_server(prefix) as (tmp, valkey):
        yield tmp, f"redis://127.0.0.1:{valkey.port}"


def start_worker(app: str, url: str, concurrency: int, log: Path, *, latency_ms: float = 0,
                 wait: bool = True, pool: str = "threads", name: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "AII_PROVIDERS": "local", "AII_LOCAL_LATENCY_MS": str(latency_ms),
           "AII_LOG_FORMAT": "text"}
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c",
                             str(concurrency), "-E", "-l", "WARNING", "--without-gossip", "--without-mingle",
                             "-n", name or f"{app}@bench"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if wait:  # else the caller watches its tasks instead
        wait_for_workers(url, 1, [proc], log)
    return proc


def wait_for_workers(url: str, count: int, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    """Until `count` workers of `url`'s database answer a ping."""
    from bench.rawapp import app as probe  # same transport options as the workers

    probe.conf.broker_url = url
    end = time.monotonic() + 90
    while time.monotonic() < end:
        if len(probe.control.ping(timeout=0.5)) >= count:
            return
    for proc in procs:
        proc.kill()
    raise RuntimeError(f"{count} workers on {url} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Round:
    path: str
    tasks: int
    seconds: float
    calls: Counter[str]
    cpu: dict[str, float]  # seconds: client, workers (of this path's side), valkey, idle side
    load: str
    others: float  # cores busy with other processes of the machine meanwhile

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def commands(self) -> float:
        return sum(self.calls.values()) / self.tasks


class Stack:
    """N worker processes per side on one Valkey, and the four ways to give them work."""

    def __init__(self, tmp: Path, valkey: Any, workers: int, concurrency: int):
        from aiintegration.celery_app import CeleryPublisher
        from aiintegration.commands.context import Context
        from aiintegration.config import Settings
        from tests.support import celery_for

        base = f"redis://127.0.0.1:{valkey.port}"
        self.urls = {"raw": f"{base}/{RAW_DB}", "system": f"{base}/{SYSTEM_DB}"}
        self.valkey_pid = valkey.proc.pid
        self.admin = redis.Redis(port=valkey.port)
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {"raw": [], "system": []}
        for side, app in (("raw", "bench.rawapp"), ("system", "aiintegration.celery_app")):
            for i in range(workers):
                self.procs[side].append(start_worker(app, self.urls[side], concurrency, tmp / f"{side}-{workers}-{i}.log",
                                                     wait=False, name=f"{side}{i}@bench"))
        for side in self.procs:
            wait_for_workers(self.urls[side], workers, self.procs[side], tmp / f"{side}-{workers}-0.log")
        settings = Settings.from_env({**os.environ, "REDIS_URL": self.urls["system"], "AII_PROVIDERS": "local"})
        # The publisher the web app and the worker use (ignore_result, no AsyncResult per send).
        self.ctx = Context.build(settings, CeleryPublisher(celery_for(self.urls["system"])))
        self.plain = {path: subprocess.Popen([sys.executable, str(ROOT / "bench" / "plain_client.py"), url, name],
                                             cwd=tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for path, url, name in (("by-name", self.urls["system"], "aiintegration.create_generation_task"),
                                              ("raw-by-name", self.urls["raw"], "bench.noop"))}
        self.polls = 0

    def close(self) -> None:
        for plain in self.plain.values():
            if plain.stdin:
                plain.stdin.close()
            plain.wait(10)
        for group in self.procs.values():
            for proc in group:
                stop(proc)

    # one round -----------------------------------------------------------------------------
    def round(self, path: str, n: int) -> Round:
        side = "raw" if path.startswith("raw") else "system"
        idle = "system" if side == "raw" else "raw"
        groups = {"client": [os.getpid(), *(p.pid for p in self.plain.values())], "workers": [p.pid for p in self.procs[side]],
                  "valkey": [self.valkey_pid], "idle side": [p.pid for p in self.procs[idle]]}
        polls0, load = self.polls, rc.loadavg()
        with rc.measured(self.admin, groups) as cost:
            t0 = time.perf_counter()
            {"raw": self._raw, "system": self._system, "by-name": self._by_name, "raw-by-name": self._raw_by_name}[path](n)
            seconds = time.perf_counter() - t0
        cost.calls["zcard"] -= self.polls - polls0  # our own polling for `succeeded`, not the system's
        return Round(path, n, seconds, +cost.calls, cost.cpu, load, cost.others)

    def _raw(self, n: int) -> None:
        from bench.rawapp import app

        app.conf.broker_url = app.conf.result_backend = self.urls["raw"]
        results = [app.send_task("bench.noop", args=[i]) for i in range(n)]
        for r in results:
            r.get(timeout=120)

    def _system(self, n: int) -> None:
        from aiintegration.commands.create import create_generation_task

        before = self.ctx.tasks.count("succeeded")
        self.polls += 1
        for i in range(n):
            create_generation_task(self.ctx, task_type="text_generation", request_content={"prompt": f"bench {i}"},
                                   requested_by="bench")
        self._wait_succeeded(before + n)

    def _by_name(self, n: int) -> None:
        before = self.ctx.tasks.count("succeeded")
        self.polls += 1
        self._plain("by-name", n)
        self._wait_succeeded(before + n)

    def _raw_by_name(self, n: int) -> None:
        self._plain("raw-by-name", n)

    def _plain(self, path: str, n: int) -> None:
        """Hand a plain client its round; back when it has every reply."""
        plain = self.plain[path]
        assert plain.stdin and plain.stdout
        plain.stdin.write(f"{n}\n")
        plain.stdin.flush()
        ok = int(plain.stdout.readline().split()[0])
        if ok != n:
            raise RuntimeError(f"{path}: {ok} of {n} replies were ok")

    def _wait_succeeded(self, target: int) -> None:
        deadline = time.monotonic() + 300
        while self.ctx.tasks.count("succeeded") < target:
            self.polls += 1
            if time.monotonic() > deadline:
                raise RuntimeError("this system did not finish in 300 s")
            time.sleep(0.02)
        self.polls += 1


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def paired_rounds(stack: Stack, paths: list[str], n: int, rounds: int) -> tuple[dict[str, list[Round]],
                                                                                 dict[str, list[float]]]:
    """Each path beside its raw reference: the reference first in even rounds, last in odd ones."""
    done: dict[str, list[Round]] = {p: [] for p in with_references(paths)}
    ratios: dict[str, list[float]] = {p: [] for p in paths}
    for r in range(rounds):
        for path in paths:
            ref = REFERENCE[path]
            pair = {p: stack.round(p, n) for p in ((ref, path) if r % 2 == 0 else (path, ref))}
            for p, measured in pair.items():
                done[p].append(measured)
            ratios[path].append(pair[path].rate / pair[ref].rate)
            print(f"  round {r + 1}: {path:8s} {pair[path].rate:6.0f}  {ref} {pair[ref].rate:6.0f} tasks/s  "
                  f"ratio {ratios[path][-1]:.2f}  load {pair[ref].load}, others {pair[path].others:.2f}/"
                  f"{pair[ref].others:.2f} cores", flush=True)
    return done, ratios


def report_rounds(workers: int, done: dict[str, list[Round]], ratios: dict[str, list[float]]) -> list[str]:
    lines = [f"{'path':11s} {'tasks/s median [min–max]':>26s} {'ratio to raw, median of pairs':>31s}   "
             f"{'commands/task':>14s}   CPU ms/task: client  workers  valkey"]
    for path, rounds in done.items():
        ratio = spread(ratios[path], "{:.2f}") if path in ratios else ""
        cpu = {k: statistics.median(r.cpu[k] / r.tasks * 1000 for r in rounds) for k in ("client", "workers", "valkey")}
        lines.append(f"{path:11s} {spread([r.rate for r in rounds]):>26s} {ratio:>31s}   "
                     f"{spread([r.commands for r in rounds], '{:.1f}'):>14s}   "
                     f"{cpu['client']:18.2f} {cpu['workers']:8.2f} {cpu['valkey']:7.3f}")
    loads = [float(r.load) for rounds in done.values() for r in rounds]
    others = [r.others for rounds in done.values() for r in rounds]
    lines.append(f"workers={workers} per side; {sum(len(r) for r in done.values())} rounds; "
                 f"load (1-min) during rounds {min(loads):.2f}–{max(loads):.2f}; other processes kept "
                 f"{spread(others, '{:.2f}')} cores busy")
    return lines


def command_table(done: dict[str, list[Round]], top: int = 12) -> list[str]:
    """Calls per task of the busiest commands on each path (all rounds), and the total."""
    per_task = {p: {c: n / sum(r.tasks for r in rs) for c, n in sum((r.calls for r in rs), Counter()).items()}
                for p, rs in done.items()}
    names = sorted({c for table in per_task.values() for c in sorted(table, key=table.__getitem__)[-top:]},
                   key=lambda c: -max(t.get(c, 0) for t in per_task.values()))
    lines = [f"{'command':24s}" + "".join(f"{p:>12s}" for p in per_task)]
    for name in names:
        lines.append(f"{name:24s}" + "".join(f"{t.get(name, 0):12.2f}" for t in per_task.values()))
    lines.append(f"{'other':24s}" + "".join(f"{sum(v for c, v in t.items() if c not in names):12.2f}"
                                           for t in per_task.values()))
    lines.append(f"{'total':24s}" + "".join(f"{sum(t.values()):12.2f}" for t in per_task.values()))
    return lines


def attribution(stack: Stack, paths: list[str], n: int, port: int) -> dict[str, rc.Attribution]:
    """One MONITOR round per path (not timed): who sent which command, and what ran in scripts."""
    names = rc.script_names()
    found = {}
    for path in with_references(paths):
        with rc.Monitor(port) as monitor:
            stack.round(path, n)
        found[path] = monitor.attribution(PATH_DB[path], names, n)
        if path in REFERENCE:  # our polling for `succeeded`
            del found[path].sent["zcard"]
    return found


def report_attribution(found: dict[str, rc.Attribution], top: int = 14) -> list[str]:
    """Per task: round trips each path's clients and workers sent, then what ran inside each
    script (with what one call of it runs)."""
    n = next(iter(found.values())).tasks
    lines = [f"MONITOR, {n} tasks per path, per task:"]
    names = sorted({c for a in found.values() for c in sorted(a.sent, key=a.sent.__getitem__)[-top:]},
                   key=lambda c: -max(a.sent.get(c, 0) for a in found.values()))
    lines.append(f"{'sent by clients and workers':42s}" + "".join(f"{p:>12s}" for p in found))
    for name in names:
        lines.append(f"  {name:40s}" + "".join(f"{a.sent.get(name, 0) / a.tasks:12.2f}" for a in found.values()))
    lines.append(f"  {'other':40s}" + "".join(f"{sum(v for c, v in a.sent.items() if c not in names) / a.tasks:12.2f}"
                                             for a in found.values()))
    lines.append(f"  {'round trips':40s}" + "".join(f"{sum(a.sent.values()) / a.tasks:12.2f}" for a in found.values()))
    lines.append("inside Lua scripts")
    for script in sorted({s for a in found.values() for s, _ in a.in_scripts}):
        inner: Counter[str] = Counter()
        calls = 0
        for a in found.values():
            inner.update({c: v for (s, c), v in a.in_scripts.items() if s == script})
            calls += a.sent.get(f"evalsha {script}", 0)
        one_call = ", ".join(f"{c} {v / max(1, calls):.1f}" for c, v in inner.most_common())
        lines.append(f"  {script:40s}" + "".join(
            f"{sum(v for (s, _), v in a.in_scripts.items() if s == script) / a.tasks:12.2f}" for a in found.values())
            + f"   one call: {one_call}")
    lines.append(f"  {'in scripts':40s}" + "".join(f"{a.script_calls / a.tasks:12.2f}" for a in found.values()))
    lines.append(f"{'executed (sent + in scripts)':42s}" + "".join(
        f"{(sum(a.sent.values()) + a.script_calls) / a.tasks:12.2f}" for a in found.values()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process")
    parser.add_argument("--rounds", type=int, default=5, help="pairs per path and worker count")
    parser.add_argument("--paths", default="system,by-name")
    parser.add_argument("--workers", default="1", help="worker processes per side, e.g. 1,2,4")
    parser.add_argument("--monitor-tasks", type=int, default=300, help="0 = no MONITOR round")
    parser.add_argument("--no-probe", action="store_true", help="skip the commands/s probe")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    assert all(p in ("system", "by-name") for p in paths), paths
    counts = [int(w) for w in args.workers.split(",")]
    out: list[str] = []
    summary: list[tuple[int, dict[str, list[Round]], dict[str, list[float]]]] = []
    found: dict[str, rc.Attribution] = {}
    probes: list[rc.Probe] = []
    with bench_valkey_server("aii-bench-") as (tmp, valkey):
        idle = None
        for workers in counts:
            stack = Stack(tmp, valkey, workers, args.concurrency)
            try:
                for path in with_references(paths):  # warm every path up
                    stack.round(path, 100)
                if idle is None:
                    before = rc.command_calls(stack.admin)
                    time.sleep(3)
                    idle = sum(rc.calls_between(before, rc.command_calls(stack.admin)).values()) / 3
                print(f"workers={workers} per side", flush=True)
                done, ratios = paired_rounds(stack, paths, args.tasks, args.rounds)
                summary.append((workers, done, ratios))
                out += ["", *report_rounds(workers, done, ratios)]
                if workers == counts[0]:
                    out += ["", f"Redis commands per task (INFO commandstats, all {args.rounds} rounds of each path; "
                                f"idle: {idle:.1f} commands/s from every worker together)", *command_table(done)]
                    if args.monitor_tasks:
                        found = attribution(stack, paths, args.monitor_tasks, valkey.port)
                        out += ["", *report_attribution(found)]
            finally:
                stack.close()
        if not args.no_probe:
            probes = rc.probe(valkey.port, valkey.proc.pid)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"tasks={args.tasks} per round, pool=threads -c {args.concurrency} per worker process, "
          f"{args.rounds} pairs per path; {os.cpu_count()} CPUs shared by Valkey, workers and clients")
    for line in out:
        print(line)
    if len(summary) > 1:
        print("\nscale-out: tasks/s (median of rounds) and ratios (median of pairs [min–max])")
        print(f"{'workers':>8s}" + "".join(f"{p:>13s}" for p in summary[0][1])
              + "".join(f"{p + '/' + REFERENCE[p]:>24s}" for p in summary[0][2]) + "   Valkey CPU ms/task, same order")
        for workers, done, ratios in summary:
            print(f"{workers:8d}" + "".join(f"{statistics.median(r.rate for r in rs):13.0f}" for rs in done.values())
                  + "".join(f"{spread(v, '{:.2f}'):>24s}" for v in ratios.values())
                  + "   " + " / ".join(f"{statistics.median(r.cpu['valkey'] / r.tasks * 1000 for r in rs):.3f}"
                                       for rs in done.values()))
    if probes:
        print_ceilings(probes, summary[0][1], found)


def print_ceilings(probes: list[rc.Probe], done: dict[str, list[Round]], found: dict[str, rc.Attribution]) -> None:
    print("\nRedis primary on this machine (50 clients, one command in flight each, no pipelining):")
    for p in probes:
        print(f"  {p.tool:16s} {p.commands_per_s:9.0f} commands/s with Valkey's main thread at {p.busy:.2f} of a core "
              f"= {p.per_core_second:9.0f} per core-second")
    best = max(probes, key=lambda p: p.per_core_second).per_core_second
    print(f"ceiling = {best:.0f} commands/s ÷ commands per task (tasks/s one Valkey primary could carry):")
    executed_per_task = {path: statistics.median(r.commands for r in rounds) for path, rounds in done.items()}
    for path, rounds in done.items():
        executed, ref = executed_per_task[path], REFERENCE.get(path, path)
        valkey_ms = statistics.median(r.cpu["valkey"] / r.tasks * 1000 for r in rounds)
        trips = sum(found[path].sent.values()) / found[path].tasks if path in found else None
        line = (f"  {path:11s} {executed:5.1f} executed/task ({executed / executed_per_task[ref]:.2f}× {ref}) "
                f"→ {best / executed:6.0f} tasks/s")
        if trips:
            line += f";  {trips:5.1f} round trips/task → {best / trips:6.0f} tasks/s"
        line += f";  Valkey CPU {valkey_ms:.3f} ms/task measured → {1000 / valkey_ms:6.0f} tasks/s at one full core"
        print(line)


if __name__ == "__main__":
    main()
