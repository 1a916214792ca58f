"""`make screenshots`: what an operator sees, in a real browser.

Uses the stack that `aiintegration run` started (found through its state file, `var/run.json`)
or starts one of its own in a temporary state directory, submits a few tasks through the API,
waits until Flower lists them, and takes headless Chromium screenshots of Flower's task list
(behind its basic auth) and of `/docs` (Swagger UI, served by the app itself):

    docs/img/flower-tasks.png   docs/img/swagger-ui.png

Not part of `make test`: it needs Chromium (`apt-get install -y chromium`). Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiintegration import runstate  # noqa: E402 - after the repository is on the path
from aiintegration.embedded import free_port  # noqa: E402

TASKS = [
    ("text_generation", {"prompt": "Summarise the return policy in one line"}, "catalog-service", 7),
    ("text_generation", {"prompt": "Write a product title for a blue steel kettle"}, "catalog-service", 5),
    ("text_generation", {"prompt": "Explain invoice INV-1042 to the customer"}, "billing-service", 9),
    ("chat_completion", {"messages": [{"role": "user", "content": "Is the kettle dishwasher-safe?"}]},
     "support-chat", 8),
    ("image_generation", {"prompt": "a blue steel kettle on a wooden table", "size": "1024x1024"},
     "catalog-service", 3),
    ("text_generation", {"prompt": "Translate 'free shipping' into French"}, "marketing-service", 5),
]


@dataclass
class Stack:
    api_url: str
    flower_url: str
    token: str
    flower_auth: str


def loopback_only(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"screenshots: {url} is not a loopback address; this script only visits 127.0.0.1")
    return url


def http(url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(loopback_only(url), data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback URL checked above
        raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def answers(url: str, auth: str | None = None) -> int:
    try:
        http(url, headers={"Authorization": auth} if auth else None)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"screenshots: timed out after {timeout_s:.0f} s waiting for {what}")


def basic(auth: str) -> str:
    return "Basic " + base64.b64encode(auth.encode()).decode()


def stack_from_state(directory: Path) -> Stack | None:
    """The running stack of `directory`, with its credentials (environment first, like the run)."""
    state = runstate.read_state(directory)
    if state is None or not state.running() or answers(f"{state.api_url}/healthz") != 200:
        return None
    kept = runstate.read_credentials(directory)
    token = os.environ.get("AII_API_TOKENS", "").split(",")[0] or (kept[0] if kept else "")
    flower_auth = os.environ.get("AII_FLOWER_AUTH") or (kept[1] if kept else "")
    if not token or not flower_auth:
        raise SystemExit(f"screenshots: the stack of {directory} runs with credentials from its environment; "
                         "set AII_API_TOKENS and AII_FLOWER_AUTH here too")
    return Stack(state.api_url, state.flower_url, token, flower_auth)


@contextmanager
def own_stack(log: Path) -> Iterator[Stack]:
    """`aiintegration run` in a temporary state directory on free ports, stopped afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="aii-screenshots-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "AII_API_TOKENS", "AII_FLOWER_AUTH", "AII_WEB_BIND", "AII_FLOWER_PORT")}
    env.update(PYTHONPATH=str(ROOT), AII_LOG_FORMAT="text", AII_WEB_WORKERS="1", AII_WORKER_CONCURRENCY="8")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aiintegration.cli", "run", "--state-dir", str(directory),
                                 "--port", str(free_port()), "--flower-port", str(free_port())],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        print(f"starting a stack of its own (log: {log}) ...", flush=True)
        def started() -> Stack | None:
            if proc.poll() is not None:
                raise SystemExit(f"screenshots: `aiintegration run` exited with {proc.returncode}; see {log}")
            return stack_from_state(directory)

        yield wait_for("the stack to answer", started, 90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # `aiintegration run` stops everything it started
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def submit_tasks(stack: Stack) -> list[str]:
    auth = {"Authorization": f"Bearer {stack.token}"}
    ids = []
    for task_type, content, requested_by, priority in TASKS:
        body = {"task_type": task_type, "request_content": content, "requested_by": requested_by,
                "priority": priority}
        ids.append(http(f"{stack.api_url}/v1/tasks", method="POST", body=body, headers=auth)["id"])
    for task_id in ids:
        wait_for(f"task {task_id} to finish", lambda t=task_id: http(
            f"{stack.api_url}/v1/tasks/{t}", headers=auth)["status"] in ("succeeded", "dead_lettered"), 60)
    return ids


def flower_lists(stack: Stack, count: int) -> bool:
    tasks = http(f"{stack.flower_url}/api/tasks", headers={"Authorization": basic(stack.flower_auth)})
    return sum(1 for t in tasks.values() if t.get("name") == "aiintegration.process_task") >= count


def screenshot(chromium: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="aii-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
                        "--window-size=1400,900", "--virtual-time-budget=5000", loopback_only(url)],
                       check=True, capture_output=True, timeout=90)
    size = out.stat().st_size
    print(f"  {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  {size // 1024} KiB"
          + ("   (over 300 KiB: too big to commit)" if size > 300 * 1024 else ""))


def take(stack: Stack, chromium: str, out_dir: Path) -> None:
    print(f"stack: API {stack.api_url}, Flower {stack.flower_url}")
    # Flower follows task events from when it subscribed: give a fresh one a moment first.
    wait_for("Flower to answer", lambda: answers(f"{stack.flower_url}/api/tasks", basic(stack.flower_auth)) == 200)
    time.sleep(2)
    ids = submit_tasks(stack)
    print(f"submitted and finished {len(ids)} tasks")
    wait_for("Flower to list them", lambda: flower_lists(stack, len(ids)), 30)
    out_dir.mkdir(parents=True, exist_ok=True)
    user, _, password = stack.flower_auth.partition(":")
    parts = urllib.parse.urlsplit(stack.flower_url)
    # Chromium sends a URL's credentials as basic auth and keeps them for the page's own requests.
    flower = parts._replace(netloc=f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
                                   f"@{parts.netloc}", path="/tasks").geturl()
    screenshot(chromium, flower, out_dir / "flower-tasks.png")
    screenshot(chromium, f"{stack.api_url}/docs", out_dir / "swagger-ui.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="the running stack's state directory (default: AII_STATE_DIR, else var)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--own-stack", action="store_true", help="start a stack even when one is running")
    args = parser.parse_args(argv)
    chromium = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if chromium is None:
        print("screenshots: no Chromium found; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    running = None if args.own_stack else stack_from_state(runstate.state_dir(args.state_dir))
    if running:
        take(running, chromium, Path(args.out))
    else:
        with own_stack(Path(tempfile.gettempdir()) / "aii-screenshots-stack.log") as stack:
            take(stack, chromium, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
