"""Provider adapters behind one interface; `build_provider` maps a config's kind to its class."""

from __future__ import annotations

from aiintegration.providers.base import Provider, ProviderConfig


def build_provider(config: ProviderConfig) -> Provider:
    if config.kind == "local":
        from aiintegration.providers.local import LocalProvider

        return LocalProvider(config)
    if config.kind in ("openai", "openai_compatible"):
        from aiintegration.providers import openai_provider

        cls = openai_provider.OpenAICompatibleProvider if config.kind == "openai_compatible" else \
            openai_provider.OpenAIProvider
        return cls(config)
    if config.kind == "anthropic":
        from aiintegration.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider(config)
    raise ValueError(f"unknown provider kind {config.kind!r}")


__all__ = ["build_provider", "Provider", "ProviderConfig"]
