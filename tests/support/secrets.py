"""The secrets sweep: every fake API key the suite uses contains MARKER, and after the run
no response, log line, event or Redis value may contain it — except the one place a key
is meant to live, the `api_key` field of a provider's live config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

MARKER = "LEAKCHECK"


def _values(client: redis.Redis, key: str) -> list[str]:
    kind = client.type(key)
    if kind == "string":
        return [client.get(key) or ""]
    if kind == "hash":
        return [f"{field}={value}" for field, value in client.hgetall(key).items()]
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return list(client.zrange(key, 0, -1))
    if kind == "stream":
        return [json.dumps(fields) for _, fields in client.xrange(key)]
    return []


def _without_live_keys(value: str) -> str:
    """A provider config's JSON with its own api_key field removed."""
    field, _, raw = value.partition("=")
    try:
        config: dict[str, Any] = json.loads(raw)
    except ValueError:
        return value
    config.pop("api_key", None)
    return f"{field}={json.dumps(config)}"


def redis_leaks(client: redis.Redis, marker: str = MARKER) -> list[str]:
    """`key: snippet` for every Redis value holding the marker (one database)."""
    leaks = []
    for key in client.scan_iter(count=1000):
        for value in _values(client, key):
            if key.endswith(":providers:config"):
                value = _without_live_keys(value)
            at = value.find(marker)
            if at >= 0:
                leaks.append(f"{key}: …{value[max(0, at - 80):at + 40]}…")
    return leaks


def file_leaks(root: Path, marker: str = MARKER, *, skip_dirs: tuple[str, ...] = ("valkey",)) -> list[str]:
    """`file: line` for every line of every file under `root` holding the marker, except
    the Redis servers' own data files (their AOF holds the live config, by design)."""
    leaks = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part in skip_dirs or part.startswith("restart-valkey") for part in
                                     path.relative_to(root).parts[:-1]) or path.suffix in (".dat", ".bak", ".dir"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            if marker in line:
                leaks.append(f"{path.name}: {line[:300]}")
    return leaks
