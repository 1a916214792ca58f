"""The rule that picks a provider for one attempt (the router applies it to what it caches)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from aiintegration.errors import NotFound, ProviderUnavailable, UnsupportedCapability


@dataclass(frozen=True, slots=True)
class Route:
    """What the rule needs of a task: its type and pinned provider, both fixed when it is
    created. A process_task message carries them, so an attempt can choose its provider
    before it reads the record (the claim checks that the record agrees)."""

    task_type: str
    pinned: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the rule needs to know of one configured provider."""

    name: str
    enabled: bool
    capabilities: frozenset[str]


def choose_provider(task_type: str, *, order: Sequence[str], candidates: Mapping[str, Candidate],
                    blocked_for: Callable[[str], float], pinned: str | None = None) -> str:
    """The pinned provider, or the first in the preference order that is enabled, can do the
    task type, and whose circuit breaker lets a call through (`blocked_for(name)` = seconds
    until it does; 0: now). Raises the error tree's answer when none can; a wait comes back
    as `retry_after`, so the retry is due when a breaker lets a probe through, not before."""
    if pinned:
        found = candidates.get(pinned)
        if found is None:
            raise NotFound(f"unknown provider {pinned!r}")
        if task_type not in found.capabilities:
            raise UnsupportedCapability(f"provider {pinned!r} cannot do {task_type}", provider=pinned)
        if not found.enabled:
            raise ProviderUnavailable(f"provider {pinned!r} is disabled", provider=pinned)
        wait = blocked_for(pinned)
        if wait > 0:
            raise ProviderUnavailable(f"provider {pinned!r} circuit breaker is open", provider=pinned,
                                      retry_after=wait)
        return pinned
    capable = [candidates[n] for n in order if n in candidates and task_type in candidates[n].capabilities]
    if not capable:
        raise UnsupportedCapability(f"no configured provider can do {task_type}")
    waits = []
    for candidate in capable:
        if candidate.enabled:
            wait = blocked_for(candidate.name)
            if wait <= 0:
                return candidate.name
            waits.append(wait)
    raise ProviderUnavailable(f"every provider for {task_type} is disabled or has an open circuit breaker",
                              retry_after=min(waits) if waits else None)


def usable(task_type: str, *, order: Sequence[str], candidates: Mapping[str, Candidate]) -> Iterator[str]:
    """The enabled providers that can do `task_type`, in preference order (breakers aside)."""
    return (name for name in order if name in candidates and candidates[name].enabled
            and task_type in candidates[name].capabilities)


def alternatives(task_type: str, *, order: Sequence[str], candidates: Mapping[str, Candidate],
                 blocked_for: Callable[[str], float], excluding: str) -> list[str]:
    """The other providers that could take the attempt now, in preference order (a quota
    failover: the chosen one has no room for longer than the task can wait)."""
    return [name for name in usable(task_type, order=order, candidates=candidates)
            if name != excluding and blocked_for(name) <= 0]
