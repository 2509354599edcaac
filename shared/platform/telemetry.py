"""OpenTelemetry set-up and W3C trace-context propagation through message headers.

The event bus (not the services) injects the current context into every message it
publishes and extracts it on consume, so the in-process bus and RabbitMQ trace alike and
one job is one trace across gateway → preprocess → model service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "restora"


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install a tracer provider once per process; later calls only add `exporter`.

    Without an explicit exporter, OTEL_TRACES_EXPORTER picks one: `otlp` (needs the
    OTLP exporter package), `console`, or `none` (the default: spans are still created
    so trace ids reach the logs and the job records).
    """
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
        )
        provider = TracerProvider(resource=resource)
        trace.set_tracer_provider(provider)
        _add_env_exporter(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _add_env_exporter(provider: TracerProvider) -> None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if choice == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def inject_context(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Write the current trace context (traceparent/tracestate) into message headers."""
    _PROPAGATOR.inject(headers)
    return headers


def extract_context(headers: Mapping[str, Any] | None) -> otel_context.Context:
    carrier = {
        k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (headers or {}).items()
    }
    return _PROPAGATOR.extract(carrier)


@contextmanager
def consumer_span(
    name: str, headers: Mapping[str, Any] | None, **attributes: Any
) -> Iterator[trace.Span]:
    """A CONSUMER span continuing the trace the message was published in."""
    parent = extract_context(headers)
    with tracer().start_as_current_span(
        name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
