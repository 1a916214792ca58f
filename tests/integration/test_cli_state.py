"""The operator's CLI: `aiintegration status|providers|dlq` find the stack that `aiintegration run`
started through its state file and say in one line when nothing answers; `aiintegration run`
keeps one development token, Flower password and Redis port across restarts, in owner-only files."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from aiintegration import runstate
from aiintegration.commands.create import create_generation_task
from aiintegration.embedded import free_port, valkey_binary
from tests.support import ROOT, redis_url, wait_for

# What a second terminal would not have: the test run's own Redis, tokens and ports.
NOT_INHERITED = ("REDIS_URL", "AII_API_TOKENS", "AII_FLOWER_AUTH", "AII_WEB_BIND", "AII_FLOWER_PORT",
                 "AII_STATE_DIR", "AII_KEY_PREFIX")


def terminal_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def cli(*args: str, state_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    extra = {"AII_STATE_DIR": str(state_dir)} if state_dir else {}
    return subprocess.run([sys.executable, "-m", "aiintegration.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=terminal_env(**extra, **env))


def one_clear_line(proc: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiintegration: "), proc.stderr
    assert proc.returncode == runstate.EXIT_UNREACHABLE and proc.stdout == ""
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def state(directory: Path, url: str, *, pid: int | None = None, **fields: object) -> Path:
    run = runstate.RunState(pid=pid or os.getpid(), started_at=runstate.now_iso(), api_url="http://127.0.0.1:1",
                            docs_url="http://127.0.0.1:1/docs", flower_url="http://127.0.0.1:2",
                            redis_url=runstate.mask_url(url), redis_embedded=True, **fields)
    directory.mkdir(parents=True, exist_ok=True)
    return runstate.write_state(directory, run)


def test_the_cli_uses_the_running_stacks_redis_from_its_state_file(ctx, db, tmp_path):
    state(tmp_path / "var", redis_url(db))
    task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "hi"},
                                        requested_by="cli-test")
    shown = cli("status", task_id, state_dir=tmp_path / "var")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == task_id
    submitted = cli("submit", "from a second terminal", "--state-dir", str(tmp_path / "var"))  # the option too
    assert submitted.returncode == 0, submitted.stderr
    assert ctx.tasks.get(json.loads(submitted.stdout)["id"]).requested_by == "cli"
    assert '"order"' in cli("providers", state_dir=tmp_path / "var").stdout


def test_with_nothing_running_each_command_says_so_in_one_line(tmp_path):
    for command in (["status"], ["providers"], ["dlq", "list"]):
        line = one_clear_line(cli(*command, state_dir=tmp_path), "run.json does not exist", "make run",
                              f"REDIS_URL=redis://HOST:6379/0 aiintegration {command[0]}")
        assert "REDIS_URL is unset" in line


def test_a_stopped_or_vanished_run_is_not_taken_for_a_running_one(db, tmp_path):
    state(tmp_path / "stopped", redis_url(db), stopped_at="2026-11-30T10:00:00Z")
    one_clear_line(cli("status", state_dir=tmp_path / "stopped"), "stopped at 2026-11-30T10:00:00Z")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state(tmp_path / "gone", redis_url(db), pid=gone.pid)
    one_clear_line(cli("status", state_dir=tmp_path / "gone"), f"(pid {gone.pid}) is gone")


def test_a_redis_that_refuses_or_errors_is_one_line_too_and_never_shows_its_password(tmp_path):
    refused = f"redis://127.0.0.1:{free_port()}/0"
    state(tmp_path, refused)
    one_clear_line(cli("status", state_dir=tmp_path), f"cannot reach Redis at {refused}", "Connection refused",
                   "run.json, pid")
    port, replica_port = free_port(), free_port()
    locked = subprocess.Popen([str(valkey_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--requirepass", "right-pw"], stdout=subprocess.DEVNULL)
    # Answers PING but refuses writes (a read-only replica whose primary is away): fails mid-command.
    replica = subprocess.Popen([str(valkey_binary()), "--port", str(replica_port), "--bind", "127.0.0.1",
                                "--save", "", "--replicaof", "127.0.0.1", str(free_port())], stdout=subprocess.DEVNULL)
    not_redis = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=not_redis.serve_forever, daemon=True).start()
    try:
        wait_for(lambda: not runstate.port_free(port) and not runstate.port_free(replica_port),
                 what="valkey to listen")
        one_clear_line(cli("providers", REDIS_URL=f"redis://127.0.0.1:{replica_port}/0"),
                       "answered with an error: ReadOnlyError")
        line = one_clear_line(cli("providers", REDIS_URL=f"redis://:wrong-pw@127.0.0.1:{port}/0"),
                              "refused our credentials", "(REDIS_URL)", "check REDIS_URL")
        assert "wrong-pw" not in line and "redis://:***@127.0.0.1" in line
        one_clear_line(cli("dlq", "list", REDIS_URL=f"redis://127.0.0.1:{port}/0"), "refused our credentials")
        one_clear_line(cli("status", REDIS_URL=f"redis://127.0.0.1:{not_redis.server_port}/0"),
                       "answered with an error")
    finally:
        not_redis.shutdown()
        for server in (locked, replica):
            server.terminate()
            server.wait(10)


def test_the_development_credentials_are_kept_owner_only_and_replaced_on_request(tmp_path):
    first = runstate.dev_credentials(tmp_path)
    again = runstate.dev_credentials(tmp_path)
    assert (again.api_token, again.flower_auth) == (first.api_token, first.flower_auth)
    assert again.webhook_secret == first.webhook_secret and len(first.webhook_secret) >= 32
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    assert first.flower_auth.startswith("admin:") and len(first.api_token) >= 32
    rotated = runstate.dev_credentials(tmp_path, new_token=True)
    assert rotated.api_token != first.api_token and rotated.flower_auth == first.flower_auth
    assert runstate.dev_credentials(tmp_path, new_flower_password=True).flower_auth != first.flower_auth
    os.chmod(first.path, 0o644)
    os.chmod(first.path.parent, 0o755)
    tightened = runstate.dev_credentials(tmp_path)
    assert tightened.api_token == rotated.api_token and len(tightened.notes) == 2
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    first.path.write_text("{not json")
    assert runstate.dev_credentials(tmp_path).api_token != rotated.api_token


def test_the_state_file_masks_passwords_and_the_last_redis_port_is_reused_when_free(tmp_path):
    assert runstate.mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert runstate.mask_url("rediss://user:pw@h/1?ssl_cert_reqs=none") == "rediss://user:***@h/1?ssl_cert_reqs=none"
    assert runstate.mask_url("sentinel://:pw@a:26379;sentinel://:pw@b:26379/0?password=x") == \
        "sentinel://:***@a:26379;sentinel://:***@b:26379/0?password=***"
    assert runstate.mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    state(tmp_path, "redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in (tmp_path / "run.json").read_text()
    assert "has a password" in str(pytest.raises(runstate.StackNotFound, runstate.locate_redis, tmp_path).value)
    port = free_port()
    assert runstate.reusable_port(port) == port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        assert runstate.reusable_port(port) is None


def start_run(tmp_path: Path, port: int, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`aiintegration run` with only the Procfile's web line (the rest is not what is tested here)."""
    procfile = tmp_path / "Procfile"
    procfile.write_text(next(li for li in (ROOT / "Procfile").read_text().splitlines() if li.startswith("web:")))
    log = tmp_path / log_name
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aiintegration.cli", "run", "--state-dir",
                                 str(tmp_path / "var"), "--port", str(port), "--flower-port", str(free_port()),
                                 "--procfile", str(procfile)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=terminal_env(AII_WEB_WORKERS="1", AII_LOG_FORMAT="text"),
                                start_new_session=True)
    try:
        wait_for(lambda: "aiintegration is running" in log.read_text() or proc.poll() is not None,
                 timeout_s=40, interval_s=0.2, what="the run's banner")
    except AssertionError:
        stop_run(proc)
        raise
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log


def stop_run(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the run stops its honcho and Valkey, like Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_aiintegration_run_writes_its_state_keeps_its_token_and_port_and_marks_its_end(tmp_path):
    var, port = tmp_path / "var", free_port()
    proc, log = start_run(tmp_path, port, "run1.log")
    try:
        run = json.loads((var / "run.json").read_text())
        kept = json.loads((var / "private" / "credentials.json").read_text())
        assert run["pid"] == proc.pid and run["api_url"] == f"http://127.0.0.1:{port}" and run["redis_embedded"]
        assert kept["api_token"] not in (var / "run.json").read_text()
        assert kept["flower_auth"].split(":")[1] not in (var / "run.json").read_text()
        banner = log.read_text()
        assert f"API token  {kept['api_token']}" in banner and "private/credentials.json" in banner
        req = urllib.request.Request(f"{run['api_url']}/v1/tasks",
                                     headers={"Authorization": f"Bearer {kept['api_token']}"})
        with urllib.request.urlopen(req, timeout=5) as resp:  # the kept token is the one the API accepts
            assert resp.status == 200
        counts = cli("status", state_dir=var)
        assert counts.returncode == 0 and "succeeded" in json.loads(counts.stdout), counts.stderr
        again = subprocess.run([sys.executable, "-m", "aiintegration.cli", "run", "--state-dir", str(var)],
                               cwd=ROOT, capture_output=True, text=True, timeout=30, env=terminal_env())
        assert again.returncode == 1 and f"already running from {var} (pid {proc.pid}" in again.stderr
    finally:
        stop_run(proc)
    assert json.loads((var / "run.json").read_text())["stopped_at"]
    one_clear_line(cli("status", state_dir=var), "stopped at")
    proc, log = start_run(tmp_path, port, "run2.log")
    try:
        second = json.loads((var / "run.json").read_text())
        assert second["redis_port"] == run["redis_port"] and second["pid"] == proc.pid
        assert f"API token  {kept['api_token']}" in log.read_text()
    finally:
        stop_run(proc)
