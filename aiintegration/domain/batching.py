"""The batch lane's rules: which tasks may wait for a provider batch (`options.batch`, the
`AII_BATCH_POLICY`), which providers have a batch API, how waiting tasks are grouped and cut
into batches within the providers' limits, when a group is due, and whether a task's lane
deadline survives another round. Plain values in, plain values out."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.routing import Candidate, usable

LANE = "batch"  # a record's `lane` while it belongs to the batch lane
LANE_TASK_TYPES = frozenset({"text_generation", "chat_completion"})
BATCH_KINDS = frozenset({"openai", "anthropic", "openai_compatible"})
COMPLETION_WINDOW_S = 24 * 3600.0  # both providers finish (or expire) a batch within a day
_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one provider batch may hold."""

    max_requests: int
    max_bytes: int


# The providers' own limits: OpenAI 50,000 requests and 200 MB per input file, Anthropic
# 100,000 requests and 256 MB per create request.
PROVIDER_LIMITS: Mapping[str, BatchLimits] = {
    "openai": BatchLimits(50_000, 200 * _MB),
    "openai_compatible": BatchLimits(50_000, 200 * _MB),
    "anthropic": BatchLimits(100_000, 256 * _MB),
}
# A request on the wire is its content plus the model, max_tokens, custom_id and the JSONL /
# JSON envelope: counted generously, and a batch is cut at 90 % of the byte limit.
REQUEST_OVERHEAD_BYTES = 300
BYTES_HEADROOM = 0.9


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """AII_BATCH_POLICY: tasks that did not say `options.batch` go to the lane when they match
    every given condition (`max_priority` is required; the others narrow it)."""

    max_priority: int
    min_timeout_s: float = 0.0
    task_types: frozenset[str] = LANE_TASK_TYPES
    requested_by: frozenset[str] = frozenset()  # empty: any caller

    def matches(self, *, task_type: str, priority: int, timeout_s: float, requested_by: str) -> bool:
        return (priority <= self.max_priority and timeout_s >= self.min_timeout_s and task_type in self.task_types
                and (not self.requested_by or requested_by in self.requested_by))


def parse_policy(raw: str) -> BatchPolicy | None:
    """`{"max_priority": 2, "min_timeout_s": 3600, "task_types": [...], "requested_by": [...]}`;
    empty or `off`: no policy (only `options.batch: true` uses the lane)."""
    text = raw.strip()
    if not text or text.lower() in ("off", "none", "0"):
        return None
    data: Any = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("max_priority"), int):
        raise ValueError('AII_BATCH_POLICY must be JSON like {"max_priority": 2, "min_timeout_s": 3600}')
    unknown = set(data) - {"max_priority", "min_timeout_s", "task_types", "requested_by"}
    if unknown:
        raise ValueError(f"AII_BATCH_POLICY: unknown field(s) {', '.join(sorted(unknown))}")
    types = frozenset(data.get("task_types") or LANE_TASK_TYPES)
    if not types <= LANE_TASK_TYPES:
        raise ValueError(f"AII_BATCH_POLICY: task_types may only be {', '.join(sorted(LANE_TASK_TYPES))}")
    return BatchPolicy(max_priority=data["max_priority"], min_timeout_s=float(data.get("min_timeout_s") or 0),
                       task_types=types, requested_by=frozenset(data.get("requested_by") or ()))


def wants_lane(batch_option: bool | None, policy: BatchPolicy | None, *, task_type: str, priority: int,
               timeout_s: float, requested_by: str, chat: bool = False) -> bool:
    """Whether a new task asks for the lane: its own `options.batch` decides when given (true
    or false), else the policy. Image tasks and chat answers (they stream into a session) never do."""
    if chat or task_type not in LANE_TASK_TYPES:
        return False
    if batch_option is not None:
        return batch_option
    return policy is not None and policy.matches(task_type=task_type, priority=priority, timeout_s=timeout_s,
                                                 requested_by=requested_by)


def batch_enabled(config: ProviderConfig) -> bool:
    """OpenAI and Anthropic have batch APIs; an OpenAI-compatible server only when its config
    says so (`AII_PROVIDER_<NAME>_BATCH=1`: vLLM and most self-hosted servers have none)."""
    if config.kind not in BATCH_KINDS or not config.enabled:
        return False
    return bool(config.extra.get("batch", config.kind != "openai_compatible"))


def lane_provider(task_type: str, *, order: Sequence[str], configs: Mapping[str, ProviderConfig],
                  capabilities: Mapping[str, frozenset[str]], pinned: str | None) -> str | None:
    """The provider a lane task waits for: the one the task would get in realtime (pinned, or
    the first enabled provider in the order that can do its type), if that one has a batch
    API; None: the task stays realtime."""
    if pinned:
        name: str | None = pinned
    else:
        candidates = {n: Candidate(n, c.enabled, capabilities.get(n, frozenset())) for n, c in configs.items()}
        name = next(usable(task_type, order=order, candidates=candidates), None)
    config = configs.get(name) if name else None
    if name is None or config is None or task_type not in capabilities.get(name, ()):
        return None
    return name if batch_enabled(config) else None


def group_name(provider: str, model: str) -> str:
    """Tasks wait per provider and model: one batch holds one model (OpenAI requires it)."""
    return f"{provider}|{model}"


def split_group(group: str) -> tuple[str, str]:
    provider, _, model = group.partition("|")
    return provider, model


def limits_for(kind: str, max_requests: int) -> BatchLimits:
    """AII_BATCH_MAX_REQUESTS within the provider's own limits."""
    own = PROVIDER_LIMITS.get(kind, PROVIDER_LIMITS["openai"])
    return BatchLimits(max(1, min(max_requests, own.max_requests)), own.max_bytes)


def is_due(*, waiting: int, oldest_waited_s: float, max_requests: int, max_wait_s: float) -> bool:
    """A group is submitted when it fills a batch or its oldest task has waited long enough."""
    return waiting > 0 and (waiting >= max_requests or oldest_waited_s >= max_wait_s)


def cut(sizes: Sequence[int], limits: BatchLimits) -> int:
    """How many of the first requests (their content sizes in bytes) fit in one batch; at
    least one, so a single large request is still sent (the provider says if it is too big)."""
    budget = limits.max_bytes * BYTES_HEADROOM
    total = 0
    for count, size in enumerate(sizes[:limits.max_requests]):
        total += size + REQUEST_OVERHEAD_BYTES
        if total > budget:
            return max(1, count)
    return min(len(sizes), limits.max_requests)


def round_estimate_s(*, max_wait_s: float, interval_s: float, last_round_s: float) -> float:
    """How long another trip through the lane may take: waiting to be collected, a beat
    interval on each side, and as long as the round that just ended."""
    return max_wait_s + 2 * interval_s + max(0.0, last_round_s)


def survives_another_round(*, now: float, deadline: float, round_s: float) -> bool:
    """Whether a task sent back to the lane would still finish before its lane deadline;
    if not, its retry runs in realtime."""
    return now + round_s <= deadline
