"""`aiintegration run` starts the whole stack; the other sub-commands are operator tools."""

from __future__ import annotations

import argparse
import json
import os
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
    from aiintegration.embedded import EmbeddedValkey


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


def _loopback(bind: str) -> str:
    """A URL host:port for a bind address (0.0.0.0 and :: are reached on 127.0.0.1)."""
    host, _, port = bind.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("", "0.0.0.0", "::", "[::]") else bind


def _shown(path: Path) -> str:
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _start_valkey(data_dir: Path, port: int | None, *, explicit: bool) -> EmbeddedValkey:
    from aiintegration.embedded import EmbeddedValkey

    try:
        return EmbeddedValkey(data_dir, port=port, appendonly=True).start()
    except RuntimeError:
        if explicit or port is None:
            raise
        return EmbeddedValkey(data_dir, appendonly=True).start()  # the old port was taken meanwhile


def cmd_run(args: argparse.Namespace) -> int:
    from aiintegration import runstate

    env = dict(os.environ)
    # The Procfile's commands (celery, gunicorn) live beside this interpreter, in the venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    state = runstate.state_dir(args.state_dir)
    env["AII_STATE_DIR"] = str(state)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    previous = runstate.read_state(state)
    if previous and previous.running():
        print(f"aiintegration is already running from {_shown(state)} (pid {previous.pid}, API {previous.api_url}); "
              f"stop it first, or give this one another --state-dir and ports", file=sys.stderr)
        return 1
    # One development token and Flower password across restarts, unless the environment sets them.
    creds = None
    if not env.get("AII_API_TOKENS") or not env.get("AII_FLOWER_AUTH") or not env.get("AII_WEBHOOK_SECRET"):
        creds = runstate.dev_credentials(state, new_token=args.new_token, new_flower_password=args.new_flower_password)
        for note in creds.notes:
            print(f"note: {note}", file=sys.stderr)
    token_from_env, flower_from_env = bool(env.get("AII_API_TOKENS")), bool(env.get("AII_FLOWER_AUTH"))
    if creds and not token_from_env:
        env["AII_API_TOKENS"] = creds.api_token
    if creds and not flower_from_env:
        env["AII_FLOWER_AUTH"] = creds.flower_auth
    if creds and not env.get("AII_WEBHOOK_SECRET"):
        env["AII_WEBHOOK_SECRET"] = creds.webhook_secret  # kept with the token: receivers can verify
    user, _, password = env["AII_FLOWER_AUTH"].partition(":")
    if not user or not password:  # Flower would start with an empty credential
        print("aiintegration: AII_FLOWER_AUTH must be user:password with both parts set; Flower never starts "
              "without credentials", file=sys.stderr)
        return 1
    valkey = None
    if not env.get("REDIS_URL"):
        # The same port as last time when it is free, so REDIS_URL stays what it was.
        port = args.redis_port or runstate.reusable_port(
            previous.redis_port if previous and previous.redis_embedded else None)
        try:
            valkey = _start_valkey(state / "valkey", port, explicit=bool(args.redis_port))
        except RuntimeError as exc:
            print(f"aiintegration: the embedded Valkey did not start: {exc}", file=sys.stderr)
            return 1
        env["REDIS_URL"] = valkey.url
    web_bind = env.setdefault("AII_WEB_BIND", f"127.0.0.1:{args.port}")
    flower_port = env.setdefault("AII_FLOWER_PORT", str(args.flower_port))
    api = f"http://{_loopback(web_bind)}"
    flower = f"http://{_loopback(env.get('AII_FLOWER_ADDRESS', '') + ':' + flower_port)}"

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (systemd, timeout) shuts down like Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    proc = None
    try:
        run = runstate.RunState(
            pid=os.getpid(), started_at=runstate.now_iso(), api_url=api, docs_url=f"{api}/docs", flower_url=flower,
            redis_url=runstate.mask_url(env["REDIS_URL"]), redis_embedded=valkey is not None,
            redis_port=valkey.port if valkey else None, key_prefix=env.get("AII_KEY_PREFIX") or None,
            credentials_file=str(creds.path) if creds else None)
        state_file = runstate.write_state(state, run)
        procfile = Path(args.procfile).resolve()
        honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or "honcho"
        proc = subprocess.Popen([honcho, "start", "-f", str(procfile), "-d", str(procfile.parent)], env=env,
                                start_new_session=True)
        tokens = env["AII_API_TOKENS"].strip()
        token = "<one of AII_API_TOKENS>" if tokens.startswith("{") else tokens.split(",")[0]
        status = "aiintegration status" if state == Path("var").resolve() else \
            f"AII_STATE_DIR={_shown(state)} aiintegration status"
        if _wait_http(f"{api}/healthz", 60):
            kept = ("from AII_API_TOKENS" if token_from_env else
                    f"kept in {_shown(creds.path) if creds else '?'} (owner-only) with the Flower password "
                    f"for the next runs; --new-token / --new-flower-password replace them")
            print(f"""
aiintegration is running
  API        {api}/v1        (docs: {api}/docs)
  API token  {token}
             {kept}
  Flower     {flower}   (user {user}, password {password}{', from AII_FLOWER_AUTH' if flower_from_env else ''})
  Redis      {run.redis_url}{'   (embedded Valkey, data in ' + _shown(valkey.data_dir) + ')' if valkey else ''}
  State      {_shown(state_file)}: `{status}` (and dlq, providers) in another terminal finds this stack

Try it:
  curl -s -X POST {api}/v1/tasks -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
       -d '{{"task_type":"text_generation","request_content":{{"prompt":"Hello"}},"requested_by":"readme"}}'
  curl -s {api}/v1/tasks/<id> -H 'Authorization: Bearer {token}'
  {status}

Ctrl-C stops everything.
""", flush=True)
        else:
            print("the web process did not answer /healthz within 60 s; see the log above", file=sys.stderr)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if valkey:
            valkey.stop()
        runstate.mark_stopped(state, os.getpid())


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


def cmd_batches(args: argparse.Namespace) -> int:
    from aiintegration.commands.batches import list_batches

    items, cursor = list_batches(_context(), provider=args.provider, status=args.status, limit=args.limit)
    _print({"items": items, "next_cursor": cursor})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiintegration", description=__doc__)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--state-dir", default=None,
                       help="the run's state directory (default: AII_STATE_DIR, else ./var)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[where],
                         help="start Valkey (unless REDIS_URL is set), web, worker, beat and Flower")
    run.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    run.add_argument("--flower-port", type=int, default=5555)
    run.add_argument("--redis-port", type=int, default=None,
                     help="embedded Valkey port (default: the last run's when free, else a free one)")
    run.add_argument("--new-token", action="store_true", help="replace the kept development API token")
    run.add_argument("--new-flower-password", action="store_true", help="replace the kept Flower password")
    run.add_argument("--procfile", default="Procfile")
    run.set_defaults(func=cmd_run)
    submit = sub.add_parser("submit", parents=[where], help="create a generation task")
    submit.add_argument("prompt")
    submit.add_argument("--task-type", default="text_generation")
    submit.add_argument("--requested-by", default="cli")
    submit.add_argument("--priority", type=int, default=5)
    submit.set_defaults(func=cmd_submit)
    status = sub.add_parser("status", parents=[where], help="one task's record, or counts by status")
    status.add_argument("task_id", nargs="?")
    status.set_defaults(func=cmd_status)
    dlq = sub.add_parser("dlq", parents=[where], help="dead-letter queue: list, replay, review, discard")
    dlq.add_argument("action", choices=["list", "replay", "review", "discard"])
    dlq.add_argument("task_id", nargs="?")
    dlq.add_argument("--provider")
    dlq.add_argument("--error-class")
    dlq.add_argument("--note", default="")
    dlq.add_argument("--limit", type=int, default=50)
    dlq.set_defaults(func=cmd_dlq)
    prov = sub.add_parser("providers", parents=[where],
                          help="provider order, configs (keys redacted) and breakers; --switch FROM TO")
    prov.add_argument("--switch", nargs=2, metavar=("FROM", "TO"))
    prov.add_argument("--reason")
    prov.set_defaults(func=cmd_providers)
    batches = sub.add_parser("batches", parents=[where],
                             help="the batch lane's provider batches: provider, status, counts, age")
    batches.add_argument("--provider")
    batches.add_argument("--status")
    batches.add_argument("--limit", type=int, default=50)
    batches.set_defaults(func=cmd_batches)
    args = parser.parse_args(argv)
    if args.func is cmd_dlq and args.action in ("review", "discard") and not args.task_id:
        parser.error(f"dlq {args.action} needs a task id")
    if args.func is cmd_dlq and args.action == "review" and not args.note:
        parser.error('dlq review needs --note "..." (what the person reviewing it should know)')
    if args.func is not cmd_run:
        from aiintegration.runstate import EXIT_UNREACHABLE, find_stack

        problem = find_stack(args.state_dir, f"aiintegration {args.command}")
        if problem:
            print(f"aiintegration: {problem}", file=sys.stderr)
            return EXIT_UNREACHABLE
    try:
        return int(args.func(args))
    except Exception as exc:  # noqa: BLE001 - operator tool: a message, not a traceback
        import redis
        from kombu.exceptions import OperationalError

        from aiintegration.errors import AIIntegrationError

        if isinstance(exc, AIIntegrationError):
            print(f"error: {exc.message} {json.dumps(exc.details) if exc.details else ''}", file=sys.stderr)
            return 1
        if isinstance(exc, redis.RedisError | OperationalError):  # the store or broker failed mid-command
            from aiintegration.runstate import EXIT_UNREACHABLE, redis_problem

            print(f"aiintegration: {redis_problem(os.environ.get('REDIS_URL', ''), exc)}", file=sys.stderr)
            return EXIT_UNREACHABLE
        raise


if __name__ == "__main__":
    sys.exit(main())
