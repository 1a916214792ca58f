"""Provider configs and preference order in Redis.

`{p}:providers:config` maps name → JSON config (the API key lives only here),
`{p}:providers:history:{name}` keeps previous versions, `{p}:providers:order` is the
preference list, and `{p}:providers:version` changes on every write so each worker
process can cache the lot and re-read only when something changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import redis

from aiintegration.domain.records import dumps
from aiintegration.providers.base import ProviderConfig, redact_key

HISTORY_KEEP = 20


def config_to_json(config: ProviderConfig) -> str:
    return dumps({
        "name": config.name, "kind": config.kind, "api_key": config.api_key, "base_url": config.base_url,
        "models": dict(config.models), "timeout_s": config.timeout_s, "enabled": config.enabled,
        "extra": dict(config.extra),
    })


def config_from_json(raw: str) -> ProviderConfig:
    data = json.loads(raw)
    return ProviderConfig(**data)


def default_configs(names: tuple[str, ...], env: Mapping[str, str], *, local_latency_ms: float = 0) -> list[ProviderConfig]:
    """Configs for the names in AII_PROVIDERS. `openai`, `anthropic` and `local` are known;
    any other name is an OpenAI-compatible endpoint configured by AII_PROVIDER_<NAME>_BASE_URL
    (and optionally _API_KEY). AII_PROVIDER_<NAME>_MODEL sets any provider's text and chat
    model."""
    out = []
    for name in names:
        upper = name.upper().replace("-", "_")
        model = env.get(f"AII_PROVIDER_{upper}_MODEL")  # text and chat; each adapter has its default
        models = {"text_generation": model, "chat_completion": model} if model else {}
        if name == "local":
            out.append(ProviderConfig("local", "local", extra={"latency_ms": local_latency_ms}))
        elif name in ("openai", "anthropic"):
            out.append(ProviderConfig(name, name, api_key=env.get(f"{upper}_API_KEY"),
                                      base_url=env.get(f"{upper}_BASE_URL"), models=models))
        else:
            out.append(ProviderConfig(name, "openai_compatible", api_key=env.get(f"AII_PROVIDER_{upper}_API_KEY"),
                                      base_url=env.get(f"AII_PROVIDER_{upper}_BASE_URL"), models=models))
    return out


class ProviderStore:
    def __init__(self, client: redis.Redis, *, prefix: str = "aii"):
        self.r = client
        self.p = prefix
        self.k_config = f"{prefix}:providers:config"
        self.k_order = f"{prefix}:providers:order"
        self.k_version = f"{prefix}:providers:version"

    def seed(self, configs: list[ProviderConfig]) -> None:
        """Write env defaults for providers not configured yet; never overwrites a stored
        config (an operator's UpdateProviderConfig wins over the environment)."""
        pipe = self.r.pipeline()
        for cfg in configs:
            pipe.hsetnx(self.k_config, cfg.name, config_to_json(cfg))
        pipe.execute()
        if not self.r.exists(self.k_order) and configs:
            self.r.rpush(self.k_order, *[c.name for c in configs])
            self.r.incr(self.k_version)

    def version(self) -> str:
        return str(self.r.get(self.k_version) or "0")

    def snapshot(self) -> tuple[str, list[str], dict[str, ProviderConfig]]:
        pipe = self.r.pipeline()
        pipe.get(self.k_version)
        pipe.lrange(self.k_order, 0, -1)
        pipe.hgetall(self.k_config)
        version, order, configs = pipe.execute()
        return str(version or "0"), list(order), {n: config_from_json(v) for n, v in configs.items()}

    def get(self, name: str) -> ProviderConfig | None:
        raw = self.r.hget(self.k_config, name)
        return config_from_json(raw) if raw else None

    def put(self, config: ProviderConfig) -> int:
        """Store a new version, keeping the previous one in the history (its API key redacted:
        the live config is the only place a key is kept); returns its number."""
        previous = self.r.hget(self.k_config, config.name)
        pipe = self.r.pipeline()
        if previous:
            old = config_from_json(previous)
            audit = config_to_json(old.with_changes(api_key=redact_key(old.api_key)))
            pipe.lpush(f"{self.p}:providers:history:{config.name}", audit)
            pipe.ltrim(f"{self.p}:providers:history:{config.name}", 0, HISTORY_KEEP - 1)
        pipe.hset(self.k_config, config.name, config_to_json(config))
        pipe.incr(self.k_version)
        pipe.llen(f"{self.p}:providers:history:{config.name}")
        return int(pipe.execute()[-1]) + 1

    def history(self, name: str) -> list[ProviderConfig]:
        return [config_from_json(v) for v in self.r.lrange(f"{self.p}:providers:history:{name}", 0, -1)]

    def set_order(self, order: list[str]) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self.k_order)
        pipe.rpush(self.k_order, *order)
        pipe.incr(self.k_version)
        pipe.execute()

    def order(self) -> list[str]:
        return list(self.r.lrange(self.k_order, 0, -1))
