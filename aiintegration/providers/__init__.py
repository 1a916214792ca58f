"""Provider adapters behind one interface; `build_provider` maps a config's kind to its class."""

from __future__ import annotations

from aiintegration.domain.providers import ProviderConfig
from aiintegration.providers.base import Provider


def provider_class(kind: str) -> type[Provider]:
    """The adapter class of a config kind (an SDK is imported only when its kind is used)."""
    if kind == "local":
        from aiintegration.providers.local import LocalProvider

        return LocalProvider
    if kind in ("openai", "openai_compatible"):
        from aiintegration.providers import openai_provider

        return openai_provider.OpenAICompatibleProvider if kind == "openai_compatible" else \
            openai_provider.OpenAIProvider
    if kind == "anthropic":
        from aiintegration.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider
    raise ValueError(f"unknown provider kind {kind!r}")


def build_provider(config: ProviderConfig) -> Provider:
    return provider_class(config.kind)(config)


__all__ = ["build_provider", "provider_class", "Provider", "ProviderConfig"]
