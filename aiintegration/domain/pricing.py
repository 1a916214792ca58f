"""Cost estimates from a price table: {model or provider: {"input_per_1k", "output_per_1k"}}."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Prices = Mapping[str, Mapping[str, float]]


def parse_prices(raw: str) -> dict[str, dict[str, float]]:
    """AII_PRICES, e.g. '{"gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006}}'."""
    if not raw.strip():
        return {}
    data: Any = json.loads(raw)
    return {str(k): {"input_per_1k": float(v.get("input_per_1k", 0)), "output_per_1k": float(v.get("output_per_1k", 0))}
            for k, v in data.items()}


def estimate_cost(prices: Prices, *, model: str, provider: str, input_tokens: int, output_tokens: int) -> float:
    """The model's price if listed, else the provider's, else 0 (the local provider is free)."""
    price = prices.get(model) or prices.get(provider) or {}
    cost = input_tokens / 1000 * price.get("input_per_1k", 0.0) + output_tokens / 1000 * price.get("output_per_1k", 0.0)
    return round(cost, 8)
