"""Provider configs and preference order in Redis.

`Keys.provider_configs` maps name → JSON config (the API key lives only here),
`Keys.provider_history` keeps previous versions, `Keys.provider_order` is the preference
list, and `Keys.provider_version` changes on every write so each worker process can cache
the lot and re-read only when something changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import cast

import redis

from aiintegration.domain.providers import ProviderConfig, redact_key
from aiintegration.domain.records import dumps
from aiintegration.store.keys import Keys

HISTORY_KEEP = 20
log = logging.getLogger(__name__)


def config_to_json(config: ProviderConfig) -> str:
    return dumps(config.to_dict())


def config_from_json(raw: str) -> ProviderConfig:
    return ProviderConfig(**json.loads(raw))


class ProviderStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, defaults: Sequence[ProviderConfig] = ()):
        self.r = client
        self.keys = keys
        self.defaults = list(defaults)  # the environment's configs (AII_PROVIDERS), seeded when missing

    def seed(self, configs: Sequence[ProviderConfig] | None = None) -> None:
        """Write the environment's configs for providers not configured yet; never overwrites
        a stored config (an operator's UpdateProviderConfig wins over the environment)."""
        configs = self.defaults if configs is None else configs
        pipe = self.r.pipeline()
        for cfg in configs:
            pipe.hsetnx(self.keys.provider_configs, cfg.name, config_to_json(cfg))
        pipe.execute()
        if not self.r.exists(self.keys.provider_order) and configs:
            self.r.rpush(self.keys.provider_order, *[c.name for c in configs])
            self.r.incr(self.keys.provider_version)

    def version(self) -> str:
        return str(self.r.get(self.keys.provider_version) or "0")

    def _read(self) -> tuple[str, list[str], dict[str, ProviderConfig]]:
        pipe = self.r.pipeline()
        pipe.get(self.keys.provider_version)
        pipe.lrange(self.keys.provider_order, 0, -1)
        pipe.hgetall(self.keys.provider_configs)
        version, order, configs = cast(tuple[str | None, list[str], dict[str, str]], tuple(pipe.execute()))
        return str(version or "0"), order, {n: config_from_json(v) for n, v in configs.items()}

    def snapshot(self) -> tuple[str, list[str], dict[str, ProviderConfig]]:
        """(version, order, configs by name), read together. When the configs or the order are
        gone (Redis restarted without persistence, a failover to an empty replica), the
        environment's are written back first: "no configured provider" never comes from that."""
        version, order, configs = self._read()
        if self.defaults and (not configs or not order):
            log.warning("provider configs or order missing from Redis (data lost?): re-seeding from the environment")
            self.seed()
            version, order, configs = self._read()
        return version, order, configs

    def get(self, name: str) -> ProviderConfig | None:
        raw = cast(str | None, self.r.hget(self.keys.provider_configs, name))
        if raw is None and self.defaults and not self.r.exists(self.keys.provider_configs):
            return self.snapshot()[2].get(name)
        return config_from_json(raw) if raw else None

    def put(self, config: ProviderConfig) -> int:
        """Store a new version, keeping the previous one in the history (its API key redacted:
        the live config is the only place a key is kept); returns its number."""
        history = self.keys.provider_history(config.name)
        previous = cast(str | None, self.r.hget(self.keys.provider_configs, config.name))
        pipe = self.r.pipeline()
        if previous:
            old = config_from_json(previous)
            pipe.lpush(history, config_to_json(old.with_changes(api_key=redact_key(old.api_key))))
            pipe.ltrim(history, 0, HISTORY_KEEP - 1)
        pipe.hset(self.keys.provider_configs, config.name, config_to_json(config))
        pipe.incr(self.keys.provider_version)
        pipe.llen(history)
        return int(pipe.execute()[-1]) + 1

    def history(self, name: str) -> list[ProviderConfig]:
        return [config_from_json(v) for v in cast(list[str], self.r.lrange(self.keys.provider_history(name), 0, -1))]

    def set_order(self, order: list[str]) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self.keys.provider_order)
        pipe.rpush(self.keys.provider_order, *order)
        pipe.incr(self.keys.provider_version)
        pipe.execute()

    def order(self) -> list[str]:
        return cast(list[str], self.r.lrange(self.keys.provider_order, 0, -1))
