"""Test helpers: real Celery worker subprocesses, per-test Redis databases, polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from celery import Celery

from aiintegration.celery_app import CeleryPublisher
from aiintegration.commands.context import Context
from aiintegration.config import Settings
from aiintegration.domain.records import TaskRecord
from aiintegration.domain.routing import Route

ROOT = Path(__file__).resolve().parents[2]


def redis_url(db: int) -> str:
    base = os.environ["AII_TEST_REDIS_BASE"]
    return f"{base}/{db}"


def celery_for(url: str) -> Celery:
    app = Celery("aiintegration-test", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = url
    app.conf.result_backend = url
    return app


def make_context(db: int, **settings: Any) -> Context:
    return context_for(redis_url(db), **settings)


def context_for(url: str, **settings: Any) -> Context:
    """A Context on any Redis URL, publishing process_task messages like the web app does."""
    s = Settings.from_env({**os.environ, "REDIS_URL": url})
    if settings:
        s = Settings(**{**s.__dict__, **settings})
    return Context.build(s, CeleryPublisher(celery_for(url)))


class RecordingPublisher:
    """A publisher that only writes down what it was asked to send (or fails like a broker
    that is down), for sweeps whose sends a test checks."""

    def __init__(self, *, fail: bool = False):
        self.fail = fail
        self.task_ids: list[str] = []
        self.dispatched: list[tuple[str, dict[str, Any]]] = []

    def enqueue_process_task(self, task_id: str, priority: int, countdown: float | None = None, *,
                             attempt: int = 1, route: Route | None = None) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.task_ids.append(task_id)

    def dispatch(self, name: str, kwargs: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.dispatched.append((name, kwargs))


class Worker:
    """A real `celery worker` process on its own Redis database; SIGKILL-able."""

    def __init__(self, db: int, *, concurrency: int = 8, env: dict[str, str] | None = None, name: str = "w"):
        self.db = db
        self.concurrency = concurrency
        self.env = {**os.environ, "REDIS_URL": redis_url(db), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ["AII_TEST_TMP"]) / f"worker-{db}-{name}-{time.time_ns()}.log"

    ready_marker = " ready."

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "worker", "-P", "threads",
                "-c", str(self.concurrency), "-Q", "celery,webhooks", "-E", "-l", "INFO",
                "-n", f"{self.name}-{self.db}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]

    def start(self, timeout_s: float = 30) -> Worker:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.ready_marker in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Beat(Worker):
    """A real `celery beat` process sending the sweeps on the schedule its env sets
    (AII_PENDING_INTERVAL_S, AII_CLEANUP_INTERVAL_S, ...)."""

    ready_marker = "beat: Starting"

    def command(self) -> list[str]:
        schedule = self.log.with_suffix(".schedule")
        return [sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "beat", "-l", "INFO",
                "-s", str(schedule)]


class Web(Worker):
    """The web process exactly as the Procfile's `web` line runs it (gunicorn, gevent workers),
    on 127.0.0.1:`port`."""

    ready_marker = "Booting worker"

    def __init__(self, db: int, port: int, *, workers: int = 1, env: dict[str, str] | None = None):
        super().__init__(db, env={"AII_WEB_BIND": f"127.0.0.1:{port}", "AII_WEB_WORKERS": str(workers),
                                  **(env or {})}, name="web")
        self.port = port

    def command(self) -> list[str]:
        import re
        import shlex

        line = next(li for li in (ROOT / "Procfile").read_text().splitlines() if li.startswith("web:"))
        line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: self.env.get(m.group(1), m.group(2)), line[4:])
        args = shlex.split(line)
        assert args[0] == "gunicorn", args
        return [sys.executable, "-m", "gunicorn", *args[1:]]


def wait_for(predicate: Callable[[], Any], *, timeout_s: float = 15, interval_s: float = 0.05,
             what: str = "condition") -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def wait_status(ctx: Context, task_id: str, statuses: Iterable[str], timeout_s: float = 15) -> TaskRecord:
    wanted = set(statuses)

    def check() -> TaskRecord | None:
        rec = ctx.tasks.get(task_id)
        return rec if rec and rec.status in wanted else None

    try:
        return wait_for(check, timeout_s=timeout_s, what=f"task {task_id} in {sorted(wanted)}")
    except AssertionError:
        rec = ctx.tasks.get(task_id)
        raise AssertionError(f"task {task_id} is {rec and rec.status} (want {sorted(wanted)}): {rec}") from None


def events_of(ctx: Context, task_id: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(f["data"]) for _, f in ctx.tasks.r.xrange(ctx.tasks.keys.task_stream(task_id))]


class Monitor:
    """What Redis runs for one database while open (MONITOR): `(source, args)` per command,
    source "lua" for a command run inside a script (right after its EVALSHA), else the
    client's address. `client` is a client on that database (it marks the end)."""

    def __init__(self, client: Any):
        import threading
        import uuid

        self.client, self.db = client, int(client.connection_pool.connection_kwargs.get("db", 0))
        self.commands: list[tuple[str, list[str]]] = []
        self._end = f"monitor-end-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        import redis

        kwargs = self.client.connection_pool.connection_kwargs
        monitor_client = redis.Redis(host=kwargs.get("host", "127.0.0.1"), port=kwargs.get("port", 6379),
                                     decode_responses=True)
        with monitor_client.monitor() as monitor:
            self._ready.set()
            while True:
                line = monitor.next_command()
                if int(line["db"]) != self.db:
                    continue
                args = line["command"].split(" ")
                if args[-1] == self._end:
                    return
                source = "lua" if line.get("client_type") == "lua" else f"{line['client_address']}:{line['client_port']}"
                self.commands.append((source, args))

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)  # MONITOR is on before the first command we want to see
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self._end)
        self._thread.join(10)

    def sent(self) -> list[list[str]]:
        """The commands clients sent (one round trip each, a pipeline's apart), scripts' inner ones left out."""
        return [args for source, args in self.commands if source != "lua"]
