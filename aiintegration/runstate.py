"""What `aiintegration run` leaves in its state directory (`var/` by default, `AII_STATE_DIR`) so
that the other sub-commands and tools find the running stack (`find_stack`), and the development
credentials it keeps across restarts.

    var/run.json                    URLs, pid, Redis port; no secrets (passwords in URLs are masked)
    var/private/                    0700
    var/private/credentials.json    0600: the development API token and Flower password
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import redis

from aiintegration.config import get_settings
from aiintegration.store.probe import ping

STATE_FILE = "run.json"
PRIVATE_DIR = "private"
CREDENTIALS_FILE = "credentials.json"
FLOWER_USER = "admin"
_MASK = "***"


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`explicit` (a --state-dir option), else `AII_STATE_DIR`, else `var` under the current directory."""
    return Path(explicit or os.environ.get("AII_STATE_DIR") or "var").resolve()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***` (`redis://:pw@h/0`, `?password=pw`, sentinel lists)."""
    url = re.sub(r"(//[^:/@;?#]*:)[^@/;]+@", rf"\g<1>{_MASK}@", url)
    return re.sub(r"([?&](?:sentinel_)?password=)[^&;]*", rf"\g<1>{_MASK}", url)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reusable_port(previous: int | None) -> int | None:
    """The previous run's port when it is free again (same REDIS_URL as before), else None
    (the caller takes any free one)."""
    return previous if previous and port_free(previous) else None


@dataclass(frozen=True)
class RunState:
    """One `aiintegration run`: what it started, where, and whether it still runs."""

    pid: int
    started_at: str
    api_url: str
    docs_url: str
    flower_url: str
    redis_url: str  # masked when it carries a password
    redis_embedded: bool
    redis_port: int | None = None
    key_prefix: str | None = None
    credentials_file: str | None = None  # where the API token and Flower password are kept, if there
    stopped_at: str | None = None

    @property
    def redis_url_usable(self) -> bool:
        return _MASK not in self.redis_url

    def running(self) -> bool:
        return self.stopped_at is None and pid_alive(self.pid)


def write_state(directory: Path, state: RunState) -> Path:
    """Write `run.json` atomically (0644: it holds no secret)."""
    path = directory / STATE_FILE
    _write_atomic(path, json.dumps(asdict(state), indent=2) + "\n", 0o644)
    return path


def read_state(directory: Path) -> RunState | None:
    """The last run's state, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        known = {f for f in RunState.__dataclass_fields__}
        return RunState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def mark_stopped(directory: Path, pid: int) -> None:
    """Mark the state of run `pid` stopped; its Redis port stays there for the next run to reuse."""
    state = read_state(directory)
    if state is not None and state.pid == pid:
        try:
            write_state(directory, replace(state, stopped_at=now_iso()))
        except OSError:
            pass  # the directory went away: nothing left to mislead anyone


class StackNotFound(Exception):
    """No running stack could be found from the state directory; the message says why."""


def locate_redis(directory: Path) -> RunState:
    """The running stack's state, whose Redis URL the CLI may use; StackNotFound otherwise."""
    path = directory / STATE_FILE
    state = read_state(directory)
    if state is None:
        why = "is unreadable" if path.exists() else "does not exist"
        raise StackNotFound(f"no running stack found: REDIS_URL is unset and {path} {why}")
    if state.stopped_at:
        raise StackNotFound(f"no running stack found: the `aiintegration run` of {path} stopped at {state.stopped_at}")
    if not pid_alive(state.pid):
        raise StackNotFound(f"no running stack found: the `aiintegration run` of {path} (pid {state.pid}) is gone")
    if not state.redis_url_usable:
        raise StackNotFound(f"the running stack's Redis URL has a password, which {path} does not keep "
                            f"({state.redis_url})")
    return state


@dataclass(frozen=True)
class DevCredentials:
    """The development API token, Flower `user:password` and webhook signing secret that
    `aiintegration run` keeps."""

    api_token: str
    flower_auth: str
    path: Path
    notes: tuple[str, ...] = ()
    webhook_secret: str = ""


def dev_credentials(directory: Path, *, new_token: bool = False,
                    new_flower_password: bool = False) -> DevCredentials:
    """The kept credentials (made on first use, or when asked for new ones), in a 0600 file in a
    0700 directory. A file or directory others could read is tightened, and said so in `notes`."""
    private = directory / PRIVATE_DIR
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    notes = []
    if stat.S_IMODE(private.stat().st_mode) != 0o700:
        os.chmod(private, 0o700)
        notes.append(f"{private} was open to others; now 0700")
    path = private / CREDENTIALS_FILE
    data: dict[str, str] = {}
    if path.exists():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
            notes.append(f"{path} was readable by others; now 0600 (`--new-token` makes a new token)")
        try:
            loaded = json.loads(path.read_text())
            data = {k: v for k, v in loaded.items() if isinstance(v, str) and v} if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            notes.append(f"{path} was unreadable; made new credentials")
    changed = False
    if new_token or "api_token" not in data:
        data["api_token"] = secrets.token_urlsafe(24)
        changed = True
    if new_flower_password or ":" not in data.get("flower_auth", ""):
        data["flower_auth"] = f"{FLOWER_USER}:{secrets.token_urlsafe(12)}"
        changed = True
    if "webhook_secret" not in data:  # webhooks are signed, so the dev stack has a secret too
        data["webhook_secret"] = secrets.token_urlsafe(24)
        changed = True
    if changed:
        data["updated_at"] = now_iso()
        _write_atomic(path, json.dumps(data, indent=2) + "\n", 0o600)
    return DevCredentials(data["api_token"], data["flower_auth"], path, tuple(notes), data["webhook_secret"])


def read_credentials(directory: Path) -> tuple[str, str] | None:
    """(API token, Flower user:password) kept in `directory`, for tools run by the same user."""
    try:
        data = json.loads((directory / PRIVATE_DIR / CREDENTIALS_FILE).read_text())
        return str(data["api_token"]), str(data["flower_auth"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_atomic(path: Path, text: str, mode: int) -> None:
    # Created with its final mode (O_EXCL on a fresh name: no moment where others could read it,
    # whatever the umask), then renamed over the old file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)  # the umask may have removed bits of a 0644 file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Exit status of the CLI when no stack answers (no state file, a stopped run, Redis refusing or erring).
EXIT_UNREACHABLE = 3


def redis_problem(url: str, exc: Exception, source: str = "") -> str:
    """One line saying what is wrong with the Redis at `url` (`source`: where the URL came from)."""
    where = f"Redis at {mask_url(url)}" + (f" ({source})" if source else "")
    said = str(exc).rstrip(". ")
    if isinstance(exc, redis.AuthenticationError):
        return f"{where} refused our credentials: {said}"
    if isinstance(exc, redis.BusyLoadingError):
        return f"{where} is still loading its data; try again in a moment"
    if isinstance(exc, redis.TimeoutError):
        return f"{where} did not answer in time"
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach {where}: {said}"
    return f"{where} answered with an error: {type(exc).__name__}: {said}"


def find_stack(explicit_dir: str | None, command: str) -> str | None:
    """Point this process at the stack (REDIS_URL when set, else the running stack's state file)
    and check that its Redis answers; None when it does, else one line saying why and what to do."""
    url, source = os.environ.get("REDIS_URL", ""), "REDIS_URL"
    if url:
        hint = "check REDIS_URL, or unset it to use the stack that `make run` started"
    else:
        hint = f"start it with `make run`, or point at one: REDIS_URL=redis://HOST:6379/0 {command}"
        directory = state_dir(explicit_dir)
        try:
            run = locate_redis(directory)
        except StackNotFound as exc:
            return f"{exc}; {hint}"
        url, source = run.redis_url, f"from {directory / STATE_FILE}, pid {run.pid}"
        os.environ["REDIS_URL"] = url  # before anything reads the settings (celeryconfig does at import)
        if run.key_prefix and not os.environ.get("AII_KEY_PREFIX"):
            os.environ["AII_KEY_PREFIX"] = run.key_prefix
        get_settings.cache_clear()
    try:
        ping(url)
    except redis.RedisError as exc:
        return f"{redis_problem(url, exc, source)}; {hint}"
    return None
