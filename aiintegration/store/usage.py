"""What each tenant used and spent: a ledger per UTC day (`{p}:usage:<day>`: per tenant,
provider and model — requests, input, cached input and output tokens, cost — plus the
tenant's totals) and per month (totals), written by the transition that records a success
(so the ledger, the task's cost and `aii_cost_total` never disagree), and the budget
reservations made at submission (`{p}:budget:<tenant>:day:<day>` / `month:<month>`),
released by the transition that ends the task."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

import redis

from aiintegration.domain.budgets import KINDS
from aiintegration.store.keys import Keys

_SAFE = re.compile(r"[|]")

# KEYS: per window (day, month): the usage totals hash, the reservations hash.
# ARGV: tenant, estimated cost, estimated tokens, then per window and kind (day cost, day tokens,
#       month cost, month tokens) its limit ('' = none), then the reservations' ttls (day, month).
# Refuses when a limited window's spent + reserved has reached its limit (so concurrent
# submissions overshoot by at most one estimate); else reserves the estimate in every window.
# Returns {1} or {0, window, kind}.
RESERVE = """
local tenant, est = ARGV[1], {cost = tonumber(ARGV[2]), tokens = tonumber(ARGV[3])}
local windows = {{name = 'day', usage = KEYS[1], reserved = KEYS[2], limits = {ARGV[4], ARGV[5]}, ttl = ARGV[8]},
                 {name = 'month', usage = KEYS[3], reserved = KEYS[4], limits = {ARGV[6], ARGV[7]}, ttl = ARGV[9]}}
local kinds = {'cost', 'tokens'}
for _, w in ipairs(windows) do
  for i, kind in ipairs(kinds) do
    if w.limits[i] ~= '' then
      local spent = tonumber(redis.call('HGET', w.usage, tenant .. '|' .. kind) or '0')
      local held = tonumber(redis.call('HGET', w.reserved, kind) or '0')
      if spent + held >= tonumber(w.limits[i]) then return {0, w.name, kind} end
    end
  end
end
for _, w in ipairs(windows) do
  for _, kind in ipairs(kinds) do redis.call('HINCRBYFLOAT', w.reserved, kind, est[kind]) end
  redis.call('EXPIRE', w.reserved, w.ttl)
end
return {1}
"""


def usage_arg(*, day: str, month: str, tenant: str, provider: str, model: str, input_tokens: int,
              cached_input_tokens: int, output_tokens: int, cost: float) -> str:
    """The TRANSITION script's usage argument for one successful call."""
    parts = [day, month, tenant, provider, model, "1", str(input_tokens), str(cached_input_tokens),
             str(output_tokens), repr(cost)]
    return "|".join(_SAFE.sub("_", p) for p in parts)


class UsageStore:
    def __init__(self, client: redis.Redis, *, keys: Keys):
        self.r, self.keys = client, keys
        self._reserve = client.register_script(RESERVE)

    def reserve(self, tenant: str, windows: Mapping[str, str], limits: Mapping[tuple[str, str], float | None], *,
                cost: float, tokens: int, ttls: Mapping[str, int]) -> tuple[str, str] | None:
        """None when reserved; else the (window, kind) whose budget is spent."""
        keys = [self.keys.usage("day", windows["day"]), self.keys.budget_reserved(tenant, "day", windows["day"]),
                self.keys.usage("month", windows["month"]), self.keys.budget_reserved(tenant, "month", windows["month"])]
        limit_args: list[str | float] = []
        for window in ("day", "month"):
            for kind in KINDS:
                limit = limits.get((window, kind))
                limit_args.append("" if limit is None else limit)
        out = self._reserve(keys=keys, args=[tenant, cost, tokens, *limit_args, ttls["day"], ttls["month"]])
        return None if int(out[0]) == 1 else (str(out[1]), str(out[2]))

    def spent(self, tenant: str, window: str, key: str) -> dict[str, float]:
        raw = cast(list[str | None], self.r.hmget(self.keys.usage(window, key), [f"{tenant}|{k}" for k in KINDS]))
        return {k: float(v or 0) for k, v in zip(KINDS, raw, strict=True)}

    def reserved(self, tenant: str, window: str, key: str) -> dict[str, float]:
        raw = cast(list[str | None], self.r.hmget(self.keys.budget_reserved(tenant, window, key), list(KINDS)))
        return {k: max(0.0, float(v or 0)) for k, v in zip(KINDS, raw, strict=True)}

    def day(self, day: str) -> list[dict[str, Any]]:
        """One day's ledger rows: {"day", "tenant", "provider", "model", "requests", ...}."""
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for field, value in cast(dict[str, str], self.r.hgetall(self.keys.usage("day", day))).items():
            parts = field.split("|")
            if len(parts) != 4:
                continue  # a tenant's totals
            tenant, provider, model, name = parts
            row = rows.setdefault((tenant, provider, model), {
                "day": day, "tenant": tenant, "provider": provider, "model": model, "requests": 0,
                "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0, "cost": 0.0})
            row[name] = round(float(value), 8) if name == "cost" else int(float(value))
        return [rows[k] for k in sorted(rows)]

    def release(self, tenant: str, budget: tuple[float, int, str, str]) -> None:
        """Give back a reservation no task holds (an idempotent repeat)."""
        cost, tokens, day, month = budget
        pipe = self.r.pipeline(transaction=False)
        for window, key in (("day", day), ("month", month)):
            pipe.hincrbyfloat(self.keys.budget_reserved(tenant, window, key), "cost", -cost)
            pipe.hincrbyfloat(self.keys.budget_reserved(tenant, window, key), "tokens", -tokens)
        pipe.execute()
