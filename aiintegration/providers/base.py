"""The one interface every provider adapter implements, and the shapes it trades in.

An adapter turns a `GenerationRequest` into a `Generation` (or a stream of text deltas
ending in a `Generation`) and raises only the error tree of `aiintegration.errors`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from aiintegration import errors
from aiintegration.domain.limits import TASK_TYPES
from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.quotas import RateLimitInfo, estimate_tokens, go_duration_s

ShouldStop = Callable[[], bool]
Translate = Callable[[Exception], errors.AIIntegrationError]


def connection_failure(exc: BaseException) -> str:
    """What went wrong under an SDK's connection error ("ConnectError: [Errno 111] Connection
    refused"): transport errors name an address and an errno, never a header or a key."""
    cause = exc.__cause__ or exc.__context__ or exc
    text = str(cause).strip()[:200]
    return f"could not connect to the provider ({type(cause).__name__}{': ' + text if text else ''})"


@contextmanager
def sdk_errors(translate: Translate, secret: str | None = None) -> Iterator[None]:
    """The boundary where an adapter's SDK exceptions become the error tree (httpx's
    `map_httpcore_exceptions()` is the model): every SDK call of an adapter runs inside it.
    The provider's message goes into the task's error, which its caller reads: a `secret`
    (the adapter's API key) a server echoed back in it is masked there."""
    try:
        yield
    except errors.AIIntegrationError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, or re-raised when it is not the SDK's
        error = translate(exc)
        if secret and secret in error.message:
            error.message = error.message.replace(secret, "…[redacted]")
            error.args = (error.message, *error.args[1:])
        raise error from None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One attempt's request, already validated by the domain layer."""

    task_type: str
    content: Mapping[str, Any]
    timeout_s: float
    model: str | None = None

    def system_and_messages(self) -> tuple[str | None, list[dict[str, str]]]:
        """Normalize text and chat content to (system prompt, [{role, content}])."""
        system = self.content.get("system")
        if self.task_type == "chat_completion":
            messages = []
            for m in self.content.get("messages", []):
                if m["role"] == "system":
                    system = m["content"] if system is None else f"{system}\n\n{m['content']}"
                else:
                    messages.append({"role": m["role"], "content": m["content"]})
            return system, messages
        return system, [{"role": "user", "content": str(self.content.get("prompt", ""))}]

    @property
    def max_tokens(self) -> int:
        return int(self.content.get("max_tokens") or 1024)

    def estimated_prompt_tokens(self) -> int:
        """The prompt's tokens before the call (domain.quotas.estimate_tokens); with
        `max_tokens`, what quotas and budgets reserve."""
        return estimate_tokens(*self.system_and_messages())


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer. `input_tokens` counts every prompt token, the cached ones
    included; `cached_input_tokens` (read from the provider's prompt cache) and
    `cache_write_tokens` (written to it, Anthropic) are priced apart (domain/pricing.py)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished answer; `to_result()` is the SPEC §3 result shape."""

    provider: str
    model: str
    text: str | None = None
    images: tuple[Mapping[str, str], ...] = ()
    usage: Usage = Usage()
    finish_reason: str | None = None
    rate_limits: RateLimitInfo | None = None  # what the provider's answer said about its limits

    def to_result(self) -> dict[str, Any]:
        if self.text is None:
            return {"images": [dict(i) for i in self.images], "model": self.model, "provider": self.provider}
        return {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens,
                      "cached_input_tokens": self.usage.cached_input_tokens},
            "finish_reason": self.finish_reason,
        }


class Provider:
    """Base adapter. Subclasses set `kind` and `capabilities` and implement `generate`, and
    `agenerate` with their SDK's async client: workers make every call through the async pair,
    on one event loop per process, so that a cancelled or overdue call is really stopped."""

    kind: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset(TASK_TYPES)
    default_models: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: ProviderConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def model_for(self, request: GenerationRequest) -> str:
        return (
            request.model
            or request.content.get("model")
            or self.config.models.get(request.task_type)
            or self.default_models.get(request.task_type, "")
        )

    def generate(self, request: GenerationRequest) -> Generation:
        raise NotImplementedError

    def stream(self, request: GenerationRequest, should_stop: ShouldStop) -> Iterator[str | Generation]:
        """Yield text deltas, then the final `Generation`. Adapters with a streaming API
        override this and check `should_stop()` between chunks."""
        generation = self.generate(request)
        if generation.text:
            yield generation.text
        yield generation

    async def agenerate(self, request: GenerationRequest) -> Generation:
        """`generate`, awaited on the worker's event loop. This fallback runs it in a thread,
        which a cancel cannot stop: adapters override it."""
        generation: Generation = await asyncio.to_thread(self.generate, request)
        return generation

    async def aclose(self) -> None:
        """Close the async SDK client (`aclient`) and its connections, if this adapter made one."""
        client = self.__dict__.get("aclient")  # a functools.cached_property: there once it was used
        if client is not None:
            await client.close()

    async def astream(self, request: GenerationRequest, should_stop: ShouldStop) -> AsyncIterator[str | Generation]:
        """`stream`, awaited: text deltas, then the final `Generation`. Adapters with a streaming
        API override it; cancelling the consumer's task closes the stream."""
        generation = await self.agenerate(request)
        if generation.text:
            yield generation.text
        yield generation

    def _timeout(self, request: GenerationRequest) -> float:
        """One call's SDK timeout: the attempt's time left, at most the provider's own."""
        return min(request.timeout_s, self.config.timeout_s)

    def check(self) -> None:
        """A cheap live call proving the config works; raises the error tree if not."""
        self.generate(GenerationRequest("text_generation", {"prompt": "ping", "max_tokens": 1}, timeout_s=10))


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms`, `Retry-After: <seconds>` or `Retry-After: <HTTP date>`."""
    if not headers:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_for_status(status: int, message: str, *, provider: str, retry_after: float | None = None,
                     code: str | None = None) -> errors.AIIntegrationError:
    """An HTTP status from a provider → our error tree (the adapters' shared rule)."""
    if code in ("content_policy_violation", "content_filter") or "content policy" in message.lower():
        return errors.ContentRejected(message, provider=provider)
    if status == 429:
        return errors.RateLimited(message, retry_after=retry_after, provider=provider)
    if status in (408, 409) or status >= 500:
        return errors.ProviderUnavailable(message, provider=provider)
    if status in (401, 403):
        return errors.AuthenticationFailed(message, provider=provider)
    return errors.InvalidRequest(message, provider=provider)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def openai_rate_limits(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets like "6m0s")."""
    if not headers:
        return None

    def reset(name: str) -> float | None:
        value = headers.get(name)
        return go_duration_s(value) if value else None

    info = RateLimitInfo(
        _int(headers.get("x-ratelimit-limit-requests")), _int(headers.get("x-ratelimit-remaining-requests")),
        reset("x-ratelimit-reset-requests"), _int(headers.get("x-ratelimit-limit-tokens")),
        _int(headers.get("x-ratelimit-remaining-tokens")), reset("x-ratelimit-reset-tokens"))
    return None if info.empty else info


def anthropic_rate_limits(headers: Mapping[str, str] | None, *, now: float | None = None) -> RateLimitInfo | None:
    """Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (resets as
    RFC 3339 times)."""
    if not headers:
        return None
    now = time.time() if now is None else now

    def reset(name: str) -> float | None:
        value = headers.get(name)
        if not value:
            return None
        try:
            return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
        except ValueError:
            return None

    info = RateLimitInfo(
        _int(headers.get("anthropic-ratelimit-requests-limit")), _int(headers.get("anthropic-ratelimit-requests-remaining")),
        reset("anthropic-ratelimit-requests-reset"), _int(headers.get("anthropic-ratelimit-tokens-limit")),
        _int(headers.get("anthropic-ratelimit-tokens-remaining")), reset("anthropic-ratelimit-tokens-reset"))
    return None if info.empty else info
# -- the batch lane's interface (OpenAI's Batch API, Anthropic's Message Batches) ------------

@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One task in a provider batch: `custom_id` is the task id."""

    custom_id: str
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    """A provider's batch as the lane needs to know it."""

    id: str
    status: str  # the provider's own word (OpenAI status, Anthropic processing_status)
    ended: bool  # no item will change any more: results can be read
    created_at: float
    counts: Mapping[str, int]
    failure: str | None = None  # the batch as a whole was refused (OpenAI validation): why
    files: tuple[str, ...] = ()  # OpenAI: the output and error files to read


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of one item: a generation, an error of our tree (the provider's message
    kept), or `unfinished` ("expired", "canceled") when it was never answered."""

    custom_id: str
    generation: Generation | None = None
    error: errors.AIIntegrationError | None = None
    unfinished: str | None = None


class BatchAPI(ABC):
    """What an adapter with a batch API implements; every call maps SDK errors at the
    adapter's `sdk_errors` boundary. A submission is two steps so the lane can record its
    intent before each: `batch_upload` (OpenAI's input file; nothing billable) and
    `batch_create`, tagged with our own batch id (`ref`) where the API keeps metadata."""

    @abstractmethod
    def batch_upload(self, ref: str, requests: Sequence[BatchRequest]) -> str | None:
        """Upload what the batch needs before it is created; returns the upload's id (None: nothing to upload)."""

    @abstractmethod
    def batch_create(self, ref: str, requests: Sequence[BatchRequest], upload: str | None) -> ProviderBatch:
        """Create the batch (the step the provider bills)."""

    @abstractmethod
    def batch_find(self, ref: str, *, since: float, total: int, known: Set[str]) -> ProviderBatch | None:
        """After a crash: the batch `batch_create` made for `ref` if the provider has it —
        created after `since`, not one of `known` (ids already ours), holding `total` requests."""

    @abstractmethod
    def batch_get(self, batch_id: str) -> ProviderBatch: ...

    @abstractmethod
    def batch_cancel(self, batch_id: str) -> ProviderBatch: ...

    @abstractmethod
    def batch_results(self, batch: ProviderBatch) -> Iterator[BatchOutcome]:
        """Every answered item of an ended batch, in the provider's order."""


# Anthropic's error types in a batch item → the HTTP status the same error has in realtime.
ANTHROPIC_ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                          "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                          "api_error": 500, "overloaded_error": 529, "timeout_error": 504}
# A reconciled batch may have been created this long before the intent was recorded (clock skew).
CLOCK_SLACK_S = 300.0
