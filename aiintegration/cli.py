"""`aiintegration run` starts the whole stack; the other sub-commands are operator tools."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiintegration.commands.context import Context


def _wait_http(url: str, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL we built
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def cmd_run(args: argparse.Namespace) -> int:
    from aiintegration.embedded import EmbeddedValkey

    env = dict(os.environ)
    # The Procfile's commands (celery, gunicorn) live beside this interpreter, in the venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    state = Path(env.setdefault("AII_STATE_DIR", str(Path(args.state_dir).resolve())))
    state.mkdir(parents=True, exist_ok=True)
    valkey = None
    if not env.get("REDIS_URL"):
        valkey = EmbeddedValkey(state / "valkey", port=args.redis_port, appendonly=True).start()
        env["REDIS_URL"] = valkey.url
    if not env.get("AII_API_TOKENS"):
        env["AII_API_TOKENS"] = secrets.token_urlsafe(24)
    if not env.get("AII_FLOWER_AUTH"):
        env["AII_FLOWER_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    web_bind = env.setdefault("AII_WEB_BIND", f"127.0.0.1:{args.port}")
    flower_port = env.setdefault("AII_FLOWER_PORT", str(args.flower_port))
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (systemd, timeout) shuts down like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    procfile = Path(args.procfile).resolve()
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or "honcho"
    proc = subprocess.Popen([honcho, "start", "-f", str(procfile), "-d", str(procfile.parent)], env=env,
                            start_new_session=True)
    token = env["AII_API_TOKENS"].split(",")[0]
    api = f"http://{web_bind}"
    try:
        if _wait_http(f"{api}/healthz", 60):
            user = env["AII_FLOWER_AUTH"].split(":")[0]
            print(f"""
aiintegration is running
  API        {api}/v1        (docs: {api}/docs)
  API token  {token}
  Flower     http://127.0.0.1:{flower_port}   (user {user}, password in AII_FLOWER_AUTH: {env['AII_FLOWER_AUTH']})
  Redis      {env['REDIS_URL']}{'   (embedded Valkey, data in ' + str(valkey.data_dir) + ')' if valkey else ''}

Try it:
  curl -s -X POST {api}/v1/tasks -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
       -d '{{"task_type":"text_generation","request_content":{{"prompt":"Hello"}},"requested_by":"readme"}}'
  curl -s {api}/v1/tasks/<id> -H 'Authorization: Bearer {token}'

Ctrl-C stops everything.
""", flush=True)
        else:
            print("the web process did not answer /healthz within 60 s; see the log above", file=sys.stderr)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if valkey:
            valkey.stop()


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _context() -> Context:
    """The CLI's context: the environment's settings, publishing through the Celery app."""
    from aiintegration.celery_app import CeleryPublisher, app
    from aiintegration.commands.context import Context
    from aiintegration.config import get_settings

    return Context.build(get_settings(), CeleryPublisher(app))


def cmd_submit(args: argparse.Namespace) -> int:
    from aiintegration.commands.create import create_generation_task

    content = {"prompt": args.prompt} if args.task_type != "chat_completion" else {
        "messages": [{"role": "user", "content": args.prompt}]}
    task_id, created = create_generation_task(_context(), task_type=args.task_type, request_content=content,
                                              requested_by=args.requested_by, priority=args.priority)
    _print({"id": task_id, "created": created})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from aiintegration.commands.lifecycle import get_task, task_counts

    ctx = _context()
    _print(get_task(ctx, args.task_id).public() if args.task_id else task_counts(ctx))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from aiintegration.commands import dlq

    ctx = _context()
    if args.action == "list":
        items, cursor = dlq.list_entries(ctx, limit=args.limit, provider=args.provider, error_class=args.error_class)
        _print({"items": items, "next_cursor": cursor})
    elif args.action == "replay":
        if args.task_id:
            _print(dlq.replay(ctx, args.task_id).public())
        else:
            _print(dlq.replay_matching(ctx, provider=args.provider, error_class=args.error_class))
    elif args.action == "review":
        _print(dlq.review(ctx, args.task_id, args.note))
    elif args.action == "discard":
        _print(dlq.discard(ctx, args.task_id))
    return 0


def cmd_providers(args: argparse.Namespace) -> int:
    from aiintegration.commands import providers

    ctx = _context()
    if args.switch:
        _print(providers.switch_provider(ctx, args.switch[0], args.switch[1], args.reason or "switched from the CLI"))
    else:
        _print(providers.overview(ctx))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiintegration", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start Valkey (unless REDIS_URL is set), web, worker, beat and Flower")
    run.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    run.add_argument("--flower-port", type=int, default=5555)
    run.add_argument("--redis-port", type=int, default=None, help="embedded Valkey port (default: a free one)")
    run.add_argument("--state-dir", default="var", help="where the embedded Valkey keeps its data")
    run.add_argument("--procfile", default="Procfile")
    run.set_defaults(func=cmd_run)
    submit = sub.add_parser("submit", help="create a generation task")
    submit.add_argument("prompt")
    submit.add_argument("--task-type", default="text_generation")
    submit.add_argument("--requested-by", default="cli")
    submit.add_argument("--priority", type=int, default=5)
    submit.set_defaults(func=cmd_submit)
    status = sub.add_parser("status", help="one task's record, or counts by status")
    status.add_argument("task_id", nargs="?")
    status.set_defaults(func=cmd_status)
    dlq = sub.add_parser("dlq", help="dead-letter queue: list, replay, review, discard")
    dlq.add_argument("action", choices=["list", "replay", "review", "discard"])
    dlq.add_argument("task_id", nargs="?")
    dlq.add_argument("--provider")
    dlq.add_argument("--error-class")
    dlq.add_argument("--note", default="")
    dlq.add_argument("--limit", type=int, default=50)
    dlq.set_defaults(func=cmd_dlq)
    prov = sub.add_parser("providers", help="provider order, configs (keys redacted) and breakers; --switch FROM TO")
    prov.add_argument("--switch", nargs=2, metavar=("FROM", "TO"))
    prov.add_argument("--reason")
    prov.set_defaults(func=cmd_providers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # noqa: BLE001 - operator tool: a message, not a traceback
        from aiintegration.errors import AIIntegrationError

        if isinstance(exc, AIIntegrationError):
            print(f"error: {exc.message} {json.dumps(exc.details) if exc.details else ''}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
