"""What a call costs: a price table per model (or per provider), with cached prompt tokens
and cache writes priced apart and the batch lane at its own price.

The built-in table covers the default models (USD per 1,000 tokens, the providers' list
prices); `AII_PRICES` overrides or adds entries, e.g.
`{"gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006, "cached_input_per_1k": 0.000075}}`.
An entry without `cached_input_per_1k` / `cache_write_per_1k` prices those tokens as input;
without `batch_*` prices, the batch lane costs half the realtime price."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1k: float = 0.0
    output_per_1k: float = 0.0
    cached_input_per_1k: float | None = None  # a prompt token read from the provider's cache
    cache_write_per_1k: float | None = None  # a prompt token written to the cache (Anthropic)
    batch_input_per_1k: float | None = None
    batch_output_per_1k: float | None = None


BUILTIN: dict[str, Price] = {
    "gpt-4o-mini": Price(0.00015, 0.0006, cached_input_per_1k=0.000075),
    "gpt-4o": Price(0.0025, 0.01, cached_input_per_1k=0.00125),
    "claude-sonnet-5-5": Price(0.003, 0.015, cached_input_per_1k=0.0003, cache_write_per_1k=0.00375),
    "claude-sonnet-4-5": Price(0.003, 0.015, cached_input_per_1k=0.0003, cache_write_per_1k=0.00375),
    "claude-haiku-4-5": Price(0.001, 0.005, cached_input_per_1k=0.0001, cache_write_per_1k=0.00125),
    "local": Price(),  # the built-in provider is free
}
Prices = Mapping[str, Price]


def parse_prices(raw: str) -> dict[str, Price]:
    """The built-in table with AII_PRICES over it (an entry replaces the built-in one whole)."""
    table = dict(BUILTIN)
    if not raw.strip():
        return table
    data: Any = json.loads(raw)
    known = {f.name for f in fields(Price)}
    for key, value in data.items():
        if not isinstance(value, dict) or set(value) - known:
            raise ValueError(f"AII_PRICES[{key!r}]: an object with {', '.join(sorted(known))}")
        table[str(key)] = Price(**{k: float(v) for k, v in value.items()})
    return table


def price_of(prices: Prices, *, model: str, provider: str) -> Price:
    """The model's price if listed, else the provider's, else free."""
    return prices.get(model) or prices.get(provider) or Price()


def estimate_cost(prices: Prices, *, model: str, provider: str, input_tokens: int, output_tokens: int,
                  cached_input_tokens: int = 0, cache_write_tokens: int = 0, batch: bool = False) -> float:
    """Cost of one call. `input_tokens` counts every prompt token; the cached and cache-write
    ones among them are priced apart."""
    price = price_of(prices, model=model, provider=provider)
    cached = min(cached_input_tokens, input_tokens)
    written = min(cache_write_tokens, input_tokens - cached)
    plain = input_tokens - cached - written
    in_price = price.input_per_1k
    out_price = price.output_per_1k
    cached_price = price.cached_input_per_1k if price.cached_input_per_1k is not None else in_price
    write_price = price.cache_write_per_1k if price.cache_write_per_1k is not None else in_price
    if batch:
        half = 0.5
        in_price = price.batch_input_per_1k if price.batch_input_per_1k is not None else in_price * half
        out_price = price.batch_output_per_1k if price.batch_output_per_1k is not None else out_price * half
        cached_price, write_price = cached_price * half, write_price * half
    cost = (plain * in_price + cached * cached_price + written * write_price + output_tokens * out_price) / 1000
    return round(cost, 8)
