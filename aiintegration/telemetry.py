"""OpenTelemetry traces, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP, the SDK's
own variables) or `AII_OTEL=1` is set; `AII_OTEL_FILE=<path>` writes spans as JSON lines to
a file instead (a collector-free way to look at them).

The maintained instrumentations make the spans at the edges — Flask's for each HTTP request,
Celery's for each publish and each task run, carrying the context in the message headers.
The commands add what only they know (`commands/process.py`): an attempt span whose parent is
the trace context stored with the task record (so every attempt of a task, retries and sweep
re-sends included, joins the trace of the request that created it) and the provider call as
a span with the GenAI semantic-convention attributes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, Any

from opentelemetry import trace

_installed = False


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("AII_OTEL") == "1" or env.get("AII_OTEL_FILE"))


def _exporter(env: Mapping[str, str]) -> Any:
    path = env.get("AII_OTEL_FILE")
    if path:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        out: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the process's life
        return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers and timeout from the OTEL_EXPORTER_OTLP_* variables


def setup(service: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Install the tracer provider and the Celery instrumentation once per process, when
    enabled; returns whether tracing is on."""
    global _installed
    env = os.environ if env is None else env
    if _installed or not enabled(env):
        return _installed
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service}))
    exporter = _exporter(env)
    processor = SimpleSpanProcessor(exporter) if env.get("AII_OTEL_FILE") else BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]  # the instrumentation is untyped
    _installed = True
    return True


def instrument_flask(app: Any) -> None:
    """HTTP request spans for the web app (after `setup`)."""
    if _installed:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app, excluded_urls="healthz,readyz,metrics")  # type: ignore[no-untyped-call]
