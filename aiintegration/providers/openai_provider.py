"""OpenAI and any OpenAI-compatible endpoint (vLLM, Ollama, …) through the `openai` SDK."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator, Sequence, Set
from contextlib import AbstractContextManager
from typing import Any, Final, Literal

import openai

from aiintegration import errors
from aiintegration.domain.providers import ProviderConfig
from aiintegration.domain.quotas import RateLimitInfo
from aiintegration.providers.base import (
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
    connection_failure,
    error_for_status,
    openai_rate_limits,
    parse_retry_after,
    sdk_errors,
)
from aiintegration.providers.sending import http_client_hooks

BATCH_ENDPOINT: Final[Literal["/v1/chat/completions"]] = "/v1/chat/completions"
BATCH_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
REF_KEY = "aii_lane_batch"  # our batch id in the provider batch's metadata: how a crash is reconciled


def _translate(exc: Exception, provider: str) -> errors.AIIntegrationError:
    """The one place SDK exceptions become ours (`sdk_errors` masks the key a server echoed)."""
    if isinstance(exc, openai.APITimeoutError):
        return errors.ProviderTimeout("the provider did not answer in time", provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        return errors.ProviderUnavailable(connection_failure(exc), provider=provider)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = str(body.get("message") or exc.message)
        retry_after = parse_retry_after(exc.response.headers if exc.response is not None else None)
        return error_for_status(exc.status_code, message, provider=provider, retry_after=retry_after, code=code)
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return errors.ProviderUnavailable("the provider sent a malformed answer", provider=provider)
    if isinstance(exc, openai.OpenAIError):
        return errors.ProviderUnavailable(f"provider error: {type(exc).__name__}", provider=provider)
    raise exc


def _chunk(chunk: Any, model: str) -> tuple[str, Usage | None, str | None, list[str]]:
    """One `chat.completion.chunk` object → (model, usage, finish reason, text deltas);
    ValueError when it is not shaped like one."""
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices") or [], list):
        raise ValueError("not a chat completion chunk")
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise ValueError("malformed usage")
    finish, texts = None, []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or not isinstance(choice.get("delta") or {}, dict):
            raise ValueError("malformed choice")
        finish = choice.get("finish_reason") or finish
        text = (choice.get("delta") or {}).get("content")
        if text:
            texts.append(str(text))
    try:
        counted = _usage(usage) if usage else None
    except (TypeError, AttributeError):
        raise ValueError("malformed usage") from None
    return str(chunk.get("model") or model), counted, finish, texts


def _usage(usage: dict[str, Any]) -> Usage:
    """OpenAI's usage object (a dict): prompt tokens include the cached ones."""
    details = usage.get("prompt_tokens_details") or {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                 cached_input_tokens=int(details.get("cached_tokens") or 0))


def _batch(found: Any) -> ProviderBatch:
    counts = found.request_counts.model_dump() if found.request_counts else {}
    failure = None
    if found.status == "failed":
        problems = found.errors.data if found.errors and found.errors.data else []
        failure = "; ".join(f"{p.code}: {p.message}" for p in problems) or "the batch failed validation"
    files = tuple(f for f in (found.output_file_id, found.error_file_id) if f)
    return ProviderBatch(found.id, found.status, found.status in BATCH_ENDED, float(found.created_at), counts,
                         failure=failure, files=files)


def _check_finish(finish: str | None, provider: str) -> None:
    """A filtered answer is the request's fault, whichever way it came (reply, stream, batch)."""
    if finish == "content_filter":
        raise errors.ContentRejected("the provider filtered the answer", provider=provider)


class _Answer:
    """What a chat completion stream has said so far."""

    def __init__(self, model: str) -> None:
        self.model, self.usage = model, Usage()
        self.finish: str | None = None
        self.parts: list[str] = []

    def take(self, chunk: Any) -> list[str]:
        """One chunk's text deltas (ValueError when it is malformed)."""
        self.model, usage, finish, texts = _chunk(chunk, self.model)
        self.usage, self.finish = usage or self.usage, finish or self.finish
        self.parts.extend(texts)
        return texts

    def generation(self, provider: str, limits: RateLimitInfo | None) -> Generation:
        if self.finish is None:
            raise errors.ProviderUnavailable("the stream ended without a finish reason", provider=provider)
        _check_finish(self.finish, provider)
        return Generation(provider, self.model, text="".join(self.parts), usage=self.usage, finish_reason=self.finish,
                          rate_limits=limits)


class OpenAIProvider(Provider, BatchAPI):
    kind = "openai"
    default_models = {"text_generation": "gpt-4o-mini", "chat_completion": "gpt-4o-mini",
                      "image_generation": "gpt-image-1"}

    def __init__(self, config: ProviderConfig):
        super().__init__(config)
        # Our retry policy is the only one: the SDK never retries by itself.
        self.client = openai.OpenAI(api_key=config.api_key or "not-configured", base_url=config.base_url,
                                    max_retries=0, timeout=config.timeout_s)

    def _sdk_errors(self) -> AbstractContextManager[None]:
        return sdk_errors(lambda exc: _translate(exc, self.name), secret=self.config.api_key)

    def _messages(self, request: GenerationRequest) -> list[Any]:  # the SDK's message TypedDicts
        system, messages = request.system_and_messages()
        return ([{"role": "system", "content": system}] if system else []) + messages

    @functools.cached_property
    def aclient(self) -> openai.AsyncOpenAI:
        """The async twin of `client`, for workers' calls: made on first use, on the worker's
        event loop (the web process never needs one)."""
        return openai.AsyncOpenAI(api_key=self.config.api_key or "not-configured", base_url=self.config.base_url,
                                  max_retries=0, timeout=self.config.timeout_s,
                                  http_client=openai.DefaultAsyncHttpxClient(event_hooks=http_client_hooks()))

    def _image_params(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        return {"model": model, "prompt": str(request.content["prompt"]), "n": 1,
                "size": request.content.get("size", "1024x1024"), "response_format": "b64_json"}

    def _image(self, raw: Any, model: str) -> Generation:
        data = raw.parse().data or []
        return Generation(self.name, model, images=tuple(
            {"b64_png": d.b64_json} if d.b64_json else {"url": d.url or ""} for d in data),
            rate_limits=openai_rate_limits(raw.headers))

    def _reply(self, reply: Any, headers: Any, model: str) -> Generation:
        try:
            choice = reply.choices[0]
        except (IndexError, TypeError, AttributeError):
            raise errors.ProviderUnavailable("the provider sent no choices", provider=self.name) from None
        _check_finish(choice.finish_reason, self.name)
        return Generation(self.name, reply.model or model, text=choice.message.content or "",
                          usage=_usage(reply.usage.model_dump()) if reply.usage else Usage(),
                          finish_reason=choice.finish_reason, rate_limits=openai_rate_limits(headers))

    def generate(self, request: GenerationRequest) -> Generation:
        client = self.client.with_options(timeout=self._timeout(request))
        model = self.model_for(request)
        with self._sdk_errors():
            if request.task_type == "image_generation":
                return self._image(client.images.with_raw_response.generate(**self._image_params(request, model)),
                                   model)
            raw = client.chat.completions.with_raw_response.create(**self._body(request))
            reply = raw.parse()
        return self._reply(reply, raw.headers, model)

    async def agenerate(self, request: GenerationRequest) -> Generation:
        client = self.aclient.with_options(timeout=self._timeout(request))
        model = self.model_for(request)
        with self._sdk_errors():
            if request.task_type == "image_generation":
                return self._image(await client.images.with_raw_response.generate(
                    **self._image_params(request, model)), model)
            raw = await client.chat.completions.with_raw_response.create(**self._body(request))
            reply = raw.parse()
        return self._reply(reply, raw.headers, model)

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        """A chat completion's request body (realtime and in a batch's input file)."""
        return {"model": self.model_for(request), "messages": self._messages(request), "max_tokens": request.max_tokens}

    def _stream_body(self, request: GenerationRequest) -> dict[str, Any]:
        return {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}

    def stream(self, request: GenerationRequest, should_stop: ShouldStop) -> Iterator[str | Generation]:
        """The chat completions streaming API through the SDK's own request, SSE decoding and
        in-stream error handling, with each chunk left as the JSON object it arrived as:
        building the SDK's pydantic model costs ~0.3 ms of CPU per chunk, which at 1,000
        chunks/s was a third of a worker's CPU (bench/sse_latency.py)."""
        if request.task_type == "image_generation":
            yield self.generate(request)
            return
        client = self.client.with_options(timeout=self._timeout(request))
        answer = _Answer(self.model_for(request))
        with self._sdk_errors():
            stream = client.post("/chat/completions", body=self._stream_body(request), cast_to=object, stream=True,
                                 stream_cls=openai.Stream[object])
            limits = openai_rate_limits(stream.response.headers)
            with stream:
                for chunk in stream:
                    if should_stop():
                        return
                    yield from answer.take(chunk)
        yield answer.generation(self.name, limits)

    async def astream(self, request: GenerationRequest, should_stop: ShouldStop) -> AsyncIterator[str | Generation]:
        """`stream` through the async client (the same request and chunk handling)."""
        if request.task_type == "image_generation":
            yield await self.agenerate(request)
            return
        client = self.aclient.with_options(timeout=self._timeout(request))
        answer = _Answer(self.model_for(request))
        with self._sdk_errors():
            stream = await client.post("/chat/completions", body=self._stream_body(request), cast_to=object,
                                       stream=True, stream_cls=openai.AsyncStream[object])
            limits = openai_rate_limits(stream.response.headers)
            async with stream:
                async for chunk in stream:
                    if should_stop():
                        return
                    for text in answer.take(chunk):
                        yield text
        yield answer.generation(self.name, limits)

    def check(self) -> None:
        with self._sdk_errors():
            self.client.with_options(timeout=10).models.list()

    # the Batch API: a JSONL input file, then a batch over it ---------------------------------
    def batch_upload(self, ref: str, requests: Sequence[BatchRequest]) -> str | None:
        lines = [json.dumps({"custom_id": r.custom_id, "method": "POST", "url": BATCH_ENDPOINT,
                             "body": self._body(r.request)}, separators=(",", ":"), ensure_ascii=False)
                 for r in requests]
        with self._sdk_errors():
            uploaded = self.client.files.create(file=(f"aii-{ref}.jsonl", ("\n".join(lines) + "\n").encode()),
                                                purpose="batch")
        return uploaded.id

    def batch_create(self, ref: str, requests: Sequence[BatchRequest], upload: str | None) -> ProviderBatch:
        if upload is None:
            raise errors.InvalidRequest("an OpenAI batch needs its uploaded input file", provider=self.name)
        with self._sdk_errors():
            return _batch(self.client.batches.create(input_file_id=upload, endpoint=BATCH_ENDPOINT,
                                                     completion_window="24h", metadata={REF_KEY: ref}))

    def batch_find(self, ref: str, *, since: float, total: int, known: Set[str]) -> ProviderBatch | None:
        with self._sdk_errors():
            for found in self.client.batches.list(limit=100):  # newest first; the SDK pages by itself
                if found.created_at < since - CLOCK_SLACK_S:
                    return None
                if (found.metadata or {}).get(REF_KEY) == ref:
                    return _batch(found)
        return None

    def batch_get(self, batch_id: str) -> ProviderBatch:
        with self._sdk_errors():
            return _batch(self.client.batches.retrieve(batch_id))

    def batch_cancel(self, batch_id: str) -> ProviderBatch:
        try:
            with self._sdk_errors():
                return _batch(self.client.batches.cancel(batch_id))
        except errors.ProviderUnavailable:  # 409: it ended (or is ending) meanwhile
            return self.batch_get(batch_id)

    def batch_results(self, batch: ProviderBatch) -> Iterator[BatchOutcome]:
        for file_id in batch.files:  # the output file, then the error file
            with self._sdk_errors():
                text = self.client.files.content(file_id).text
            for line in text.splitlines():
                if line.strip():
                    yield self._outcome(line)

    def _outcome(self, raw: str) -> BatchOutcome:
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
        except (ValueError, KeyError, TypeError):
            raise errors.ProviderUnavailable("the provider sent a malformed batch result", provider=self.name) from None
        response, error = line.get("response"), line.get("error")
        if not isinstance(response, dict):
            detail = error if isinstance(error, dict) else {}
            if detail.get("code") == "batch_expired":
                return BatchOutcome(custom_id, unfinished="expired")
            if detail.get("code") == "batch_cancelled":
                return BatchOutcome(custom_id, unfinished="canceled")
            message = str(detail.get("message") or "the batch item failed")
            return BatchOutcome(custom_id, error=errors.ProviderUnavailable(message, provider=self.name))
        status, body = int(response.get("status_code") or 0), response.get("body") or {}
        if status != 200:
            found = body.get("error") if isinstance(body, dict) else None
            detail = found if isinstance(found, dict) else {}
            code = detail.get("code") if isinstance(detail.get("code"), str) else None
            message = str(detail.get("message") or f"the batch item failed with HTTP {status}")
            return BatchOutcome(custom_id, error=error_for_status(status, message, provider=self.name, code=code))
        try:
            return BatchOutcome(custom_id, generation=self._answer(body))
        except errors.AIIntegrationError as exc:
            return BatchOutcome(custom_id, error=exc)

    def _answer(self, body: Any) -> Generation:
        """A chat.completion body from a batch's output file, read as `generate` reads one."""
        try:
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            text, finish = choice["message"].get("content") or "", choice.get("finish_reason")
            counted = _usage(usage)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise errors.ProviderUnavailable("the provider sent a malformed batch answer", provider=self.name) from None
        _check_finish(finish, self.name)
        return Generation(self.name, str(body.get("model") or ""), text=str(text), usage=counted, finish_reason=finish)


class OpenAICompatibleProvider(OpenAIProvider):
    kind = "openai_compatible"
