"""Budgets and usage: a tenant's submission reserves its estimated cost and tokens against
its budget (AII_BUDGETS) and is refused with 429 `budget_exceeded` once a window is spent;
every success writes its tokens and cost into the tenant's daily ledger, which
GET /v1/usage reports and GET /v1/budgets compares with the limits."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiintegration.commands.context import Context
from aiintegration.domain.auth import TRUSTED, Caller
from aiintegration.domain.budgets import KINDS, WINDOWS, window_end, window_keys
from aiintegration.domain.pricing import estimate_cost
from aiintegration.domain.submission import Submission
from aiintegration.errors import BudgetExceeded, ValidationError
from aiintegration.providers.base import GenerationRequest, Usage
from aiintegration.store.metrics import Sample, counter
from aiintegration.store.usage import usage_arg

MAX_DAYS = 366
DEFAULT_DAYS = 7


# -- what a success costs, for a realtime attempt and a batch item alike --------------------
def price(ctx: Context, usage: Usage, *, model: str, provider: str, batch: bool = False) -> float:
    """A call's exact cost at the price table (cached and cache-write tokens priced apart)."""
    return estimate_cost(ctx.settings.prices, model=model, provider=provider, batch=batch,
                         input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         cached_input_tokens=usage.cached_input_tokens, cache_write_tokens=usage.cache_write_tokens)


def ledger_entry(now: float, usage: Usage, *, tenant: str, provider: str, model: str, cost: float) -> str:
    """The succeeding transition's usage argument: the tenant's daily and monthly ledger rows."""
    windows = window_keys(now)
    return usage_arg(day=windows["day"], month=windows["month"], tenant=tenant, provider=provider, model=model,
                     input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
                     output_tokens=usage.output_tokens, cost=cost)


def usage_samples(usage: Usage, cost: float, **labels: str) -> list[Sample]:
    """aii_tokens_total (input, output) and aii_cost_total (when it cost anything)."""
    samples = [counter("aii_tokens_total", usage.input_tokens, direction="input", **labels),
               counter("aii_tokens_total", usage.output_tokens, direction="output", **labels)]
    if cost:
        samples.append(counter("aii_cost_total", cost, **labels))
    return samples


def _estimate(ctx: Context, sub: Submission) -> tuple[float, int]:
    """A submission's cost and tokens before it runs: its prompt plus all the output it may
    produce, priced at the provider it would most likely go to (pinned, else the first
    enabled capable one in the order)."""
    request = GenerationRequest(sub.task_type, sub.request_content, timeout_s=sub.options.timeout_s)
    prompt = request.estimated_prompt_tokens()
    name = sub.options.provider or ctx.router.preferred(sub.task_type)
    if name is None:
        return 0.0, prompt + request.max_tokens
    provider = ctx.router.provider(name)
    cost = estimate_cost(ctx.settings.prices, model=provider.model_for(request), provider=name,
                         input_tokens=prompt, output_tokens=request.max_tokens)
    return cost, prompt + request.max_tokens


def reserve_budget(ctx: Context, sub: Submission) -> tuple[float, int, str, str] | None:
    """Reserve the submission's estimate against its tenant's budget (None: no budget);
    BudgetExceeded (429, Retry-After to the window's end) when a window is spent."""
    budget = ctx.settings.budgets.get(sub.tenant)
    if budget is None:
        return None
    now = ctx.clock()
    cost, tokens = _estimate(ctx, sub)
    windows = window_keys(now)
    ttls = {w: int(window_end(w, now) - now) + 86400 for w in WINDOWS}
    limits = {(w, k): budget.limit(w, k) for w in WINDOWS for k in KINDS}
    spent = ctx.usage.reserve(sub.tenant, windows, limits, cost=cost, tokens=tokens, ttls=ttls)
    if spent is not None:
        window, kind = spent
        raise BudgetExceeded(f"the {kind} budget of tenant {sub.tenant} for this {window} is spent",
                             retry_after=window_end(window, now) - now,
                             details={"tenant": sub.tenant, "window": window, "kind": kind,
                                      "limit": limits[(window, kind)]})
    return cost, tokens, windows["day"], windows["month"]


def _day(value: Any, field: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"{field} must be a day such as 2026-11-30", details={field: str(value)[:40]}) from None


def usage_report(ctx: Context, caller: Caller = TRUSTED, *, tenant: str | None = None, provider: str | None = None,
                 model: str | None = None, start: str | None = None, end: str | None = None) -> list[dict[str, Any]]:
    """Requests, tokens and cost per UTC day, tenant, provider and model, `start` to `end`
    (days, inclusive; default the last 7). A client sees its own tenant's only."""
    if tenant is not None and tenant != caller.tenant:
        caller.require_operator("another tenant's usage")
    if not caller.is_operator:
        tenant = caller.tenant
    today = datetime.fromtimestamp(ctx.clock(), UTC).date()
    last = _day(end, "to") if end else today
    first = _day(start, "from") if start else last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last or (last - first).days >= MAX_DAYS:
        raise ValidationError(f"from..to must be a range of 1 to {MAX_DAYS} days", details={"from": str(first)})
    rows = []
    for offset in range((last - first).days + 1):
        for row in ctx.usage.day((first + timedelta(days=offset)).isoformat()):
            if (tenant is None or row["tenant"] == tenant) and (provider is None or row["provider"] == provider) \
                    and (model is None or row["model"] == model):
                rows.append(row)
    return rows


def budgets_view(ctx: Context, caller: Caller = TRUSTED) -> list[dict[str, Any]]:
    """Every tenant with a budget: its limits, and per window what is spent, reserved and left."""
    caller.require_operator("the budgets")
    now = ctx.clock()
    windows = window_keys(now)
    out = []
    for tenant, budget in sorted(ctx.settings.budgets.items()):
        state: dict[str, Any] = {}
        for window in WINDOWS:
            spent = ctx.usage.spent(tenant, window, windows[window])
            held = ctx.usage.reserved(tenant, window, windows[window])
            state[window] = {"period": windows[window], "spent": spent, "reserved": held,
                             "left": {k: None if budget.limit(window, k) is None else
                                      round(max(0.0, (budget.limit(window, k) or 0) - spent[k] - held[k]), 8)
                                      for k in KINDS},
                             "resets_in_s": round(window_end(window, now) - now)}
        out.append({"tenant": tenant, "limits": budget.to_dict(), **state})
    return out
