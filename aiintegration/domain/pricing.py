"""Cost estimates from a price table: {model or provider: {"input_per_1k", "output_per_1k",
"batch_input_per_1k"?, "batch_output_per_1k"?}}. `AII_PRICES` first, then the built-in table
of the default models; the batch lane pays half the realtime price unless a `batch_*` price
is given."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Prices = Mapping[str, Mapping[str, float]]
PRICE_KEYS = ("input_per_1k", "output_per_1k", "batch_input_per_1k", "batch_output_per_1k")
# List prices of the default models, USD per 1,000 tokens (AII_PRICES overrides them).
BUILTIN_PRICES: Prices = {
    "gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006},
    "claude-sonnet-5-5": {"input_per_1k": 0.003, "output_per_1k": 0.015},
}
BATCH_DISCOUNT = 0.5  # OpenAI's Batch API and Anthropic's Message Batches: half the realtime price


def parse_prices(raw: str) -> dict[str, dict[str, float]]:
    """AII_PRICES, e.g. '{"gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006}}'."""
    if not raw.strip():
        return {}
    data: Any = json.loads(raw)
    return {str(k): {"input_per_1k": float(v.get("input_per_1k", 0)), "output_per_1k": float(v.get("output_per_1k", 0)),
                     **{key: float(v[key]) for key in PRICE_KEYS[2:] if key in v}}
            for k, v in data.items()}


def price_for(prices: Prices, *, model: str, provider: str) -> Mapping[str, float]:
    """The model's price in AII_PRICES, else the provider's, else the built-in model's, else none."""
    return prices.get(model) or prices.get(provider) or BUILTIN_PRICES.get(model) or {}


def estimate_cost(prices: Prices, *, model: str, provider: str, input_tokens: int, output_tokens: int,
                  batch: bool = False) -> float:
    """The cost of one answer; 0 for a model with no price (the local provider is free)."""
    price = price_for(prices, model=model, provider=provider)
    per_in, per_out = price.get("input_per_1k", 0.0), price.get("output_per_1k", 0.0)
    if batch:
        per_in = price.get("batch_input_per_1k", per_in * BATCH_DISCOUNT)
        per_out = price.get("batch_output_per_1k", per_out * BATCH_DISCOUNT)
    return round(input_tokens / 1000 * per_in + output_tokens / 1000 * per_out, 8)
