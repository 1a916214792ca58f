"""A Redis Sentinel deployment on 127.0.0.1 from the suite's own `valkey-server` binary: a
primary, a replica of it, and three Sentinels watching them (quorum 2), each process in its
own session so a test can SIGKILL the primary and tear everything down by process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from aiintegration.embedded import free_port, valkey_binary
from aiintegration.store.redis_client import RECOMMENDED_SERVER_CONFIG

MASTER = "mymaster"


class SentinelCluster:
    """Primary + replica (AOF on both) + three Sentinels; `url` is what REDIS_URL gets."""

    def __init__(self, root: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000):
        self.root = Path(root)
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{hosts}/0?master_name={MASTER}"

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen([str(valkey_binary()), *args], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _data_server(self, name: str, port: int, *extra: str) -> None:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        self._spawn(name, ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                           "--appendfsync", "everysec", "--dir", str(data), "--loglevel", "notice",
                           "--logfile", str(data / "valkey.log"),
                           *[a for k, v in RECOMMENDED_SERVER_CONFIG.items() for a in (f"--{k}", str(v))], *extra])

    def start(self, timeout_s: float = 20) -> SentinelCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self._data_server("primary", self.primary_port)
        self._data_server("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for i, port in enumerate(self.sentinel_ports):
            data = self.root / f"sentinel{i}"
            data.mkdir(parents=True, exist_ok=True)
            conf = data / "sentinel.conf"  # a Sentinel rewrites its config file: one each
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {data}", f"logfile {data / 'sentinel.log'}",
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER} 1", ""]))
            self._spawn(f"sentinel{i}", [str(conf), "--sentinel"])
        self._wait(self._ready, timeout_s, "the replica in sync and three Sentinels that know each other")
        return self

    def _ready(self) -> bool:
        try:
            info = redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")
            if info.get("master_link_status") != "up":
                return False
            for port in self.sentinel_ports:
                master = redis.Redis(port=port, socket_timeout=1, decode_responses=True).sentinel_master(MASTER)
                if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 1:
                    return False
            return True
        except redis.RedisError:
            return False

    def _wait(self, predicate: Callable[[], bool], timeout_s: float, what: str, *, all_alive: bool = True) -> float:
        """Polls `predicate` (bounded); returns time.monotonic() once it holds."""
        end = time.monotonic() + timeout_s
        while not predicate():
            for name, proc in self.procs.items():
                if all_alive and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log_tail(name)}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic()

    def primary_offset(self) -> int:
        """How many bytes of writes the primary has put in its replication stream so far."""
        return int(redis.Redis(port=self.primary_port, socket_timeout=1).info("replication")["master_repl_offset"])

    def offset_taken_over(self) -> int:
        """After the promotion: how far into the old primary's stream the replica had got
        (a promoted replica keeps the old stream's id valid up to `second_repl_offset` - 1)."""
        info = redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")
        return int(info["second_repl_offset"]) - 1

    def kill_primary(self) -> None:
        """SIGKILL: no AOF flush, nothing more sent to the replica."""
        proc = self.procs["primary"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def wait_promoted(self, timeout_s: float = 30) -> float:
        """Until every Sentinel names the replica as the primary and it acts as one; returns
        time.monotonic() then."""
        def promoted() -> bool:
            try:
                for port in self.sentinel_ports:
                    addr = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(MASTER)
                    if not addr or int(addr[1]) != self.replica_port:
                        return False
                role = redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")["role"]
                return bool(role == "master")
            except redis.RedisError:
                return False

        return self._wait(promoted, timeout_s, "the replica promoted by the Sentinels", all_alive=False)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        for path in (self.root / name / "valkey.log", self.root / name / "sentinel.log", self.root / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                return path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
