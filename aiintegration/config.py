"""Settings read once from the environment (all `AII_*` variables listed in the README)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from aiintegration.domain.auth import TokenGrant, parse_tokens
from aiintegration.domain.batching import BatchPolicy, parse_policy
from aiintegration.domain.budgets import Budget, parse_budgets
from aiintegration.domain.pricing import Price, parse_prices


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not value > 0:
        raise ValueError(f"{name}: a number of seconds above 0")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_float(env, name, default))


def _list(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, default).split(",") if part.strip())


def _weights(raw: str) -> dict[str, float]:
    """AII_TENANT_WEIGHTS, e.g. '{"billing": 3, "search": 1}' (default weight 1)."""
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(v, int | float) and v > 0 for v in data.values()):
        raise ValueError("AII_TENANT_WEIGHTS: an object mapping tenants to positive numbers")
    return {str(k): float(v) for k, v in data.items()}


def _tokens(env: Mapping[str, str]) -> tuple[TokenGrant, ...]:
    """AII_API_TOKENS and the file AII_API_TOKENS_FILE names, together."""
    grants = parse_tokens(env.get("AII_API_TOKENS", ""))
    path = env.get("AII_API_TOKENS_FILE", "").strip()
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"AII_API_TOKENS_FILE {path}: {exc.strerror}") from None
        grants += parse_tokens(text)
    return grants


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: int = 1000  # per process; a waiting SSE client holds one
    key_prefix: str = "aii"
    api_tokens: tuple[TokenGrant, ...] = ()
    providers: tuple[str, ...] = ("local",)
    task_timeout_s: float = 300.0
    max_task_timeout_s: float = 3600.0
    max_retries: int = 3
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 120.0
    breaker_fail_max: int = 5
    breaker_reset_s: float = 30.0
    visibility_timeout_s: float = 3900.0
    lease_s: float = 30.0
    local_latency_ms: float = 0.0
    cleanup_interval_s: float = 300.0
    dlq_interval_s: float = 1800.0
    pending_interval_s: float = 60.0
    deferred_interval_s: float = 1.0  # how often each worker sends the messages of deferred tasks that are due
    pending_grace_s: float = 120.0
    retention_s: int = 604800
    dlq_retention_s: int = 30 * 86400  # dead-lettered records and their DLQ entries
    chat_idle_ttl_s: int = 7 * 86400  # an open chat session with no activity for this long expires
    events_compact_after_s: float = 300.0  # a finished task's event stream folds into its record
    metrics_flush_s: float = 1.0  # a process writes its buffered histograms and usage counters this often
    idempotency_ttl_s: int = 86400
    task_stream_maxlen: int = 2000
    global_stream_maxlen: int = 100000
    webhook_secret: str = ""
    webhook_allow_private: bool = False
    provider_allow_private: bool = False  # provider base_urls inside the network (self-hosted servers)
    webhook_timeout_s: float = 10.0  # one delivery, connect to the last byte read
    webhook_concurrency: int = 8  # deliveries in progress per worker process
    log_json: bool = True
    prices: Mapping[str, Price] = field(default_factory=lambda: parse_prices(""))
    sse_heartbeat_s: float = 15.0
    sse_max_s: float = 3600.0
    sse_max_per_tenant: int = 100  # event streams one tenant may hold open at once
    quotas: bool = True  # AII_QUOTAS=off: no admission at all (every attempt calls at once, as before)
    quota_window_s: float = 60.0  # the "minute" of rpm/tpm (tests shorten it)
    quota_max_countdown_s: float = 30.0  # a throttled task comes back at most this much later to ask again
    tenant_weights: Mapping[str, float] = field(default_factory=dict)  # fair share when providers are scarce
    budgets: Mapping[str, Budget] = field(default_factory=dict)  # AII_BUDGETS: domain/budgets.py
    provider_env: Mapping[str, str] = field(default_factory=dict)
    # the batch lane (commands/batches.py)
    batch_interval_s: float = 60.0  # beat collects waiting lane tasks and polls batches this often
    batch_max_wait_s: float = 600.0  # a group is submitted once its oldest task waited this long
    batch_max_requests: int = 1000  # ... or once this many wait (capped by the provider's own limit)
    batch_deadline_s: float = 86400.0  # a lane task is done this long after it was created, in realtime if need be
    batch_policy: BatchPolicy | None = None
    batch_crash_at: str = ""  # tests only: the lane step where a worker SIGKILLs itself (AII_BATCH_CRASH_AT)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        keep = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
        return cls(
            redis_url=env.get("REDIS_URL") or cls.redis_url,
            redis_max_connections=_int(env, "AII_REDIS_MAX_CONNECTIONS", cls.redis_max_connections),
            key_prefix=env.get("AII_KEY_PREFIX") or cls.key_prefix,
            api_tokens=_tokens(env),
            providers=_list(env, "AII_PROVIDERS", "local"),
            task_timeout_s=_float(env, "AII_TASK_TIMEOUT_S", cls.task_timeout_s),
            max_retries=_int(env, "AII_MAX_RETRIES", cls.max_retries),
            backoff_base_s=_float(env, "AII_RETRY_BACKOFF_BASE_S", cls.backoff_base_s),
            backoff_max_s=_float(env, "AII_RETRY_BACKOFF_MAX_S", cls.backoff_max_s),
            retry_after_max_s=_float(env, "AII_RETRY_AFTER_MAX_S", cls.retry_after_max_s),
            breaker_fail_max=_int(env, "AII_BREAKER_FAIL_MAX", cls.breaker_fail_max),
            breaker_reset_s=_float(env, "AII_BREAKER_RESET_S", cls.breaker_reset_s),
            visibility_timeout_s=_float(env, "AII_VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s),
            lease_s=_float(env, "AII_LEASE_S", cls.lease_s),
            local_latency_ms=_float(env, "AII_LOCAL_LATENCY_MS", cls.local_latency_ms),
            cleanup_interval_s=_float(env, "AII_CLEANUP_INTERVAL_S", cls.cleanup_interval_s),
            dlq_interval_s=_float(env, "AII_DLQ_INTERVAL_S", cls.dlq_interval_s),
            pending_interval_s=_float(env, "AII_PENDING_INTERVAL_S", cls.pending_interval_s),
            deferred_interval_s=_positive(env, "AII_DEFERRED_INTERVAL_S", cls.deferred_interval_s),
            pending_grace_s=_float(env, "AII_PENDING_GRACE_S", cls.pending_grace_s),
            retention_s=_int(env, "AII_RETENTION_S", cls.retention_s),
            dlq_retention_s=_int(env, "AII_DLQ_RETENTION_S", cls.dlq_retention_s),
            chat_idle_ttl_s=_int(env, "AII_CHAT_IDLE_TTL_S", cls.chat_idle_ttl_s),
            events_compact_after_s=_float(env, "AII_EVENTS_COMPACT_AFTER_S", cls.events_compact_after_s),
            metrics_flush_s=_positive(env, "AII_METRICS_FLUSH_S", cls.metrics_flush_s),
            webhook_secret=env.get("AII_WEBHOOK_SECRET", ""),
            webhook_allow_private=env.get("AII_WEBHOOK_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            provider_allow_private=env.get("AII_PROVIDER_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            webhook_timeout_s=_float(env, "AII_WEBHOOK_TIMEOUT_S", cls.webhook_timeout_s),
            webhook_concurrency=max(1, _int(env, "AII_WEBHOOK_CONCURRENCY", cls.webhook_concurrency)),
            log_json=env.get("AII_LOG_FORMAT", "json") == "json",
            prices=parse_prices(env.get("AII_PRICES", "")),
            sse_heartbeat_s=_float(env, "AII_SSE_HEARTBEAT_S", cls.sse_heartbeat_s),
            sse_max_s=_float(env, "AII_SSE_MAX_S", cls.sse_max_s),
            sse_max_per_tenant=_int(env, "AII_SSE_MAX_PER_TENANT", cls.sse_max_per_tenant),
            quotas=env.get("AII_QUOTAS", "on").strip().lower() not in ("off", "0", "false", "no"),
            quota_window_s=_float(env, "AII_QUOTA_WINDOW_S", cls.quota_window_s),
            quota_max_countdown_s=_float(env, "AII_QUOTA_MAX_COUNTDOWN_S", cls.quota_max_countdown_s),
            tenant_weights=_weights(env.get("AII_TENANT_WEIGHTS", "")),
            budgets=parse_budgets(env.get("AII_BUDGETS", "")),
            batch_interval_s=_float(env, "AII_BATCH_INTERVAL_S", cls.batch_interval_s),
            batch_max_wait_s=_float(env, "AII_BATCH_MAX_WAIT_S", cls.batch_max_wait_s),
            batch_max_requests=_int(env, "AII_BATCH_MAX_REQUESTS", cls.batch_max_requests),
            batch_deadline_s=_float(env, "AII_BATCH_DEADLINE_S", cls.batch_deadline_s),
            batch_policy=parse_policy(env.get("AII_BATCH_POLICY", "")),
            batch_crash_at=env.get("AII_BATCH_CRASH_AT", "").strip(),
            provider_env={k: v for k, v in env.items() if v and (k in keep or k.startswith("AII_PROVIDER_"))},
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` instead."""
    return Settings.from_env()
