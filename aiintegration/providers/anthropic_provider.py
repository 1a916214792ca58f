"""Anthropic through the `anthropic` SDK's Messages API (no image generation)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterator, Sequence, Set
from contextlib import AbstractContextManager
from typing import Any

import anthropic

from aiintegration import errors
from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.quotas import RateLimitInfo
from aiintegration.providers.base import (
    ANTHROPIC_ERROR_STATUS,
    CLOCK_SLACK_S,
    BatchAPI,
    BatchOutcome,
    BatchRequest,
    Generation,
    GenerationRequest,
    Provider,
    ProviderBatch,
    ShouldStop,
    Usage,
    anthropic_rate_limits,
    connection_failure,
    error_for_status,
    parse_retry_after,
    sdk_errors,
)
from aiintegration.providers.sending import http_client_hooks

log = logging.getLogger(__name__)
_checked_models: set[str] = set()


def retirement(model: str) -> str | None:
    """The end-of-life date the installed SDK lists for `model`, if it lists one."""
    try:
        from anthropic._data.deprecated_models import DEPRECATED_MODELS
    except ImportError:  # a private table: gone or moved in some SDK version
        return None
    return DEPRECATED_MODELS.get(model)


def _warn_if_retiring(model: str) -> None:
    """Once per model and process, a log warning for a model the SDK says is deprecated (its
    own DeprecationWarning is hidden outside __main__, so operators would never see it)."""
    if model in _checked_models:
        return
    _checked_models.add(model)
    end = retirement(model)
    if end:
        log.warning("Anthropic model %s is deprecated and reaches end of life on %s; choose another "
                    "(AII_PROVIDER_ANTHROPIC_MODEL, the provider config's models, or the task's model)", model, end)


def _translate(exc: Exception, provider: str) -> errors.AIIntegrationError:
    """The one place SDK exceptions become ours (529 overloaded is an InternalServerError)."""
    if isinstance(exc, anthropic.APITimeoutError):
        return errors.ProviderTimeout("the provider did not answer in time", provider=provider)
    if isinstance(exc, anthropic.APIConnectionError):
        return errors.ProviderUnavailable(connection_failure(exc), provider=provider)
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        found = body.get("error")
        detail: dict[str, Any] = found if isinstance(found, dict) else {}
        message = str(detail.get("message") or exc.message)
        retry_after = parse_retry_after(exc.response.headers if exc.response is not None else None)
        return error_for_status(exc.status_code, message, provider=provider, retry_after=retry_after)
    if isinstance(exc, anthropic.AnthropicError | ValueError):
        return errors.ProviderUnavailable(f"provider error: {type(exc).__name__}", provider=provider)
    raise exc


def _usage(usage: Any) -> Usage:
    """Anthropic counts cache reads and writes apart from `input_tokens`; ours counts every
    prompt token there and prices the cached ones apart."""
    read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
    written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return Usage(int(usage.input_tokens or 0) + read + written, int(usage.output_tokens or 0),
                 cached_input_tokens=read, cache_write_tokens=written)


def _batch(found: Any) -> ProviderBatch:
    return ProviderBatch(found.id, found.processing_status, found.processing_status == "ended",
                         found.created_at.timestamp(), found.request_counts.model_dump())


class AnthropicProvider(Provider, BatchAPI):
    kind = "anthropic"
    capabilities = frozenset({"text_generation", "chat_completion"})
    # claude-sonnet-4-5 reaches end of life on 2026-11-30 (the SDK's deprecation table).
    default_models = {"text_generation": "claude-sonnet-5-5", "chat_completion": "claude-sonnet-5-5"}

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        self.client = anthropic.Anthropic(api_key=config.api_key or "not-configured", base_url=config.base_url,
                                          max_retries=0, timeout=config.timeout_s)

    def _sdk_errors(self) -> AbstractContextManager[None]:
        return sdk_errors(lambda exc: _translate(exc, self.name), secret=self.config.api_key)

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        if request.task_type not in self.capabilities:
            raise errors.UnsupportedCapability(f"anthropic cannot do {request.task_type}", provider=self.name)
        system, messages = request.system_and_messages()
        params: dict[str, Any] = {"model": self.model_for(request), "max_tokens": request.max_tokens,
                                  "messages": messages}
        _warn_if_retiring(params["model"])
        if system:
            params["system"] = system
        return params

    @functools.cached_property
    def aclient(self) -> anthropic.AsyncAnthropic:
        """The async twin of `client`, for workers' calls: made on first use, on the worker's
        event loop (the web process never needs one)."""
        return anthropic.AsyncAnthropic(
            api_key=self.config.api_key or "not-configured", base_url=self.config.base_url, max_retries=0,
            timeout=self.config.timeout_s, http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=http_client_hooks()))

    def _message(self, message: Any, model: str, limits: RateLimitInfo | None = None) -> Generation:
        """One Anthropic message as a Generation: a realtime reply, a stream's final message or
        a batch item alike (a refusal is ContentRejected in all three)."""
        if message.stop_reason == "refusal":
            raise errors.ContentRejected("the provider refused the request", provider=self.name)
        return Generation(self.name, message.model or model,
                          text="".join(getattr(block, "text", "") for block in message.content or []),
                          usage=_usage(message.usage), finish_reason=message.stop_reason, rate_limits=limits)

    def generate(self, request: GenerationRequest) -> Generation:
        params = self._params(request)
        with self._sdk_errors():
            raw = self.client.with_options(timeout=self._timeout(request)).messages.with_raw_response.create(**params)
            reply = raw.parse()
        return self._message(reply, params["model"], anthropic_rate_limits(raw.headers))

    async def agenerate(self, request: GenerationRequest) -> Generation:
        params = self._params(request)
        with self._sdk_errors():
            raw = await self.aclient.with_options(timeout=self._timeout(request)).messages.with_raw_response.create(
                **params)
            reply = await raw.parse()
        return self._message(reply, params["model"], anthropic_rate_limits(raw.headers))

    def stream(self, request: GenerationRequest, should_stop: ShouldStop) -> Iterator[str | Generation]:
        params = self._params(request)
        client = self.client.with_options(timeout=self._timeout(request))
        with self._sdk_errors(), client.messages.stream(**params) as stream:
            limits = anthropic_rate_limits(stream.response.headers)
            for text in stream.text_stream:
                if should_stop():
                    return
                yield text
            final = stream.get_final_message()
        yield self._message(final, params["model"], limits)

    async def astream(self, request: GenerationRequest, should_stop: ShouldStop) -> AsyncIterator[str | Generation]:
        params = self._params(request)
        client = self.aclient.with_options(timeout=self._timeout(request))
        with self._sdk_errors():
            async with client.messages.stream(**params) as stream:
                limits = anthropic_rate_limits(stream.response.headers)
                async for text in stream.text_stream:
                    if should_stop():
                        return
                    yield text
                final = await stream.get_final_message()
        yield self._message(final, params["model"], limits)

    # Message Batches: one create request with every item (no upload, no metadata) -----------
    def batch_upload(self, ref: str, requests: Sequence[BatchRequest]) -> str | None:
        return None

    def batch_create(self, ref: str, requests: Sequence[BatchRequest], upload: str | None) -> ProviderBatch:
        items: list[Any] = [{"custom_id": r.custom_id, "params": self._params(r.request)} for r in requests]
        with self._sdk_errors():
            return _batch(self.client.messages.batches.create(requests=items))

    def batch_find(self, ref: str, *, since: float, total: int, known: Set[str]) -> ProviderBatch | None:
        """Message batches keep no metadata: ours is the oldest batch created since the intent
        that is not already ours and holds as many requests (the lane submits one at a time)."""
        found: list[ProviderBatch] = []
        with self._sdk_errors():
            for batch in self.client.messages.batches.list(limit=100):  # newest first
                candidate = _batch(batch)
                if candidate.created_at < since - CLOCK_SLACK_S:
                    break
                if candidate.id not in known and sum(candidate.counts.values()) == total:
                    found.append(candidate)
        return min(found, key=lambda b: b.created_at) if found else None

    def batch_get(self, batch_id: str) -> ProviderBatch:
        with self._sdk_errors():
            return _batch(self.client.messages.batches.retrieve(batch_id))

    def batch_cancel(self, batch_id: str) -> ProviderBatch:
        with self._sdk_errors():
            return _batch(self.client.messages.batches.cancel(batch_id))

    def batch_results(self, batch: ProviderBatch) -> Iterator[BatchOutcome]:
        with self._sdk_errors():
            for item in self.client.messages.batches.results(batch.id):
                yield self._outcome(item)

    def _outcome(self, item: Any) -> BatchOutcome:
        result = item.result
        if result.type == "succeeded":
            try:
                return BatchOutcome(item.custom_id, generation=self._message(result.message, ""))
            except errors.AIIntegrationError as exc:
                return BatchOutcome(item.custom_id, error=exc)
        if result.type == "errored":
            detail = result.error.error
            status = ANTHROPIC_ERROR_STATUS.get(str(getattr(detail, "type", "")), 500)
            message = str(getattr(detail, "message", "") or "the batch item failed")
            return BatchOutcome(item.custom_id, error=error_for_status(status, message, provider=self.name))
        return BatchOutcome(item.custom_id, unfinished=str(result.type))  # canceled | expired
