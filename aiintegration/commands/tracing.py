"""The spans the commands add to a trace (the OpenTelemetry API only). With no tracer provider
installed — tracing off — the spans are not even started: an attempt gets the API's invalid
span, on which every call is a no-op. See aiintegration/telemetry.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from aiintegration.domain.records import TaskRecord
from aiintegration.providers.base import Generation, GenerationRequest, Provider

tracer = trace.get_tracer("aiintegration")
# GenAI semantic conventions: gen_ai.operation.name per task type
OPERATIONS = {"text_generation": "chat", "chat_completion": "chat", "image_generation": "image_generation"}


def current_trace_context() -> str | None:
    """The W3C traceparent of the span in progress (the HTTP request creating a task), to be
    stored with the record; None when nothing is traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def _tracing() -> bool:
    """A tracer provider was installed (telemetry.setup): spans are recorded somewhere."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def attempt_span(record: TaskRecord) -> Iterator[Span]:
    """One attempt of a task, in the trace of the request that created it (its stored context),
    linked to whatever span delivered this attempt (Celery's run span)."""
    if not _tracing():  # four no-op spans per attempt were ~2 % of a worker's CPU
        yield trace.INVALID_SPAN
        return
    parent = propagate.extract({"traceparent": record.trace_context}) if record.trace_context else None
    delivered = trace.get_current_span().get_span_context()
    links = [Link(delivered)] if delivered.is_valid else []
    with tracer.start_as_current_span("aiintegration.attempt", context=parent, kind=SpanKind.INTERNAL, links=links,
                                      attributes={"aiintegration.task_id": record.id,
                                                  "aiintegration.attempt": record.attempts,
                                                  "aiintegration.task_type": record.task_type}) as span:
        yield span


@contextmanager
def provider_span(provider: Provider, request: GenerationRequest) -> Iterator[Span]:
    """The provider call, named and attributed as the GenAI semantic conventions say."""
    if not _tracing():
        yield trace.INVALID_SPAN
        return
    operation = OPERATIONS.get(request.task_type, "chat")
    model = provider.model_for(request)
    with tracer.start_as_current_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.system": provider.config.kind if provider.config.kind != "openai_compatible" else "openai",
            "gen_ai.operation.name": operation, "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": request.max_tokens, "aiintegration.provider": provider.name}) as span:
        yield span


def record_generation(span: Span, generation: Generation) -> None:
    span.set_attribute("gen_ai.response.model", generation.model)
    span.set_attribute("gen_ai.usage.input_tokens", generation.usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", generation.usage.output_tokens)
    if generation.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [generation.finish_reason])


def record_failure(span: Span, kind: str, message: str = "") -> None:
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, message[:200]))
