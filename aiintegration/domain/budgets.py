"""Spending budgets per tenant (AII_BUDGETS): cost and/or tokens per UTC day and/or month.
A submission reserves its estimate against every window its tenant has a limit in; a window
whose spent + reserved has reached the limit refuses new work until it ends (429
`budget_exceeded`, Retry-After to the window's end). Work already accepted finishes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WINDOWS = ("day", "month")
KINDS = ("cost", "tokens")


@dataclass(frozen=True, slots=True)
class Budget:
    daily_cost: float | None = None
    monthly_cost: float | None = None
    daily_tokens: float | None = None
    monthly_tokens: float | None = None

    def limit(self, window: str, kind: str) -> float | None:
        return {("day", "cost"): self.daily_cost, ("month", "cost"): self.monthly_cost,
                ("day", "tokens"): self.daily_tokens, ("month", "tokens"): self.monthly_tokens}[(window, kind)]

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("daily_cost", self.daily_cost), ("monthly_cost", self.monthly_cost),
                                  ("daily_tokens", self.daily_tokens), ("monthly_tokens", self.monthly_tokens))
                if v is not None}


def parse_budgets(raw: str) -> dict[str, Budget]:
    """AII_BUDGETS, e.g. '{"billing": {"daily_cost": 25, "monthly_tokens": 5000000}}'."""
    if not raw.strip():
        return {}
    data: Any = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("AII_BUDGETS: an object mapping tenants to their budgets")
    out = {}
    for tenant, spec in data.items():
        if not isinstance(spec, dict) or not spec or set(spec) - set(Budget.__slots__):
            raise ValueError(f"AII_BUDGETS[{tenant!r}]: daily_cost, monthly_cost, daily_tokens and/or monthly_tokens")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in spec.values()):
            raise ValueError(f"AII_BUDGETS[{tenant!r}]: limits are numbers >= 0")
        out[str(tenant)] = Budget(**{k: float(v) for k, v in spec.items()})
    return out


def window_keys(now: float) -> dict[str, str]:
    """The UTC day and month `now` falls in: {"day": "2026-11-30", "month": "2026-11"}."""
    moment = datetime.fromtimestamp(now, UTC)
    return {"day": moment.strftime("%Y-%m-%d"), "month": moment.strftime("%Y-%m")}


def window_end(window: str, now: float) -> float:
    """Epoch seconds when the day or month that `now` falls in ends."""
    moment = datetime.fromtimestamp(now, UTC)
    if window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp() + 86400
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()
