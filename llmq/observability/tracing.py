"""Optional OpenTelemetry traces: one trace per job, from the submit to the webhook delivery.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; then every process (the API, each worker)
exports its spans over OTLP/HTTP (protobuf) to that collector, with the standard ``OTEL_*``
variables (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_SCHEDULE_DELAY``, ...).
Off, nothing of OpenTelemetry is even imported: every function here returns at its first line.

A job's trace outlives any one process, thread or broker message: the API's submit span is the
trace's root, and its W3C ``traceparent`` is stored on the job's row (``jobs.traceparent``), so
every later span — each wait in the queue, each provider attempt, each webhook delivery, on any
worker, after any retry, park or sweeper re-send — is made afterwards as that span's child, with
the start and end times measured where the work ran (:func:`record_span`). No context has to be
carried across threads, the event loop or the broker, and a span is one call at one place.

This module is the only one that imports OpenTelemetry; the call sites are one-liners
(``api/correlation.py`` for the submit span, ``tasks/spans.py`` for the worker's spans).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SUBMIT_SPAN = "llmq.submit"

_tracer: Any = None  # an opentelemetry Tracer, once init_tracing has run with an endpoint
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def init_tracing(service: str) -> bool:
    """Set up the exporter of this process, if an endpoint is configured; True when tracing is on.
    Spans are batched on a background thread (``BatchSpanProcessor``, which re-creates itself in
    a forked child) and flushed at exit."""
    global _tracer, _provider
    if not os.environ.get(ENDPOINT_ENV):
        return False
    if _tracer is not None:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)  # this process's own: the global one is left alone
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("llmq")
    return True


def shutdown_tracing() -> None:
    """Flush what is batched and stop (tests; a process's exit does this by itself)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def start_submit_span(headers: Mapping[str, str], attributes: Mapping[str, Any]) -> Any:
    """Start the API's span of one submit, the root of its job's trace (or, when the client sent
    a ``traceparent`` header, a child of the client's span). None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(headers.items()))
    return _tracer.start_span(SUBMIT_SPAN, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))


def traceparent_of(span: Any) -> str | None:
    """The W3C ``traceparent`` that makes a span the parent of spans recorded later elsewhere."""
    if span is None:
        return None
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def end_span(span: Any, attributes: Mapping[str, Any], error: str | None = None) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(dict(attributes))
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def now_ns() -> int:
    return time.time_ns()


def record_span(
    name: str,
    traceparent: str | None,
    *,
    start_ns: int,
    end_ns: int | None = None,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
    kind: str = "internal",
) -> None:
    """Record a span that ran from ``start_ns`` to ``end_ns`` (now, if None) as a child of the
    span ``traceparent`` names. Nothing without tracing or without a parent (a job submitted
    while tracing was off stays untraced rather than starting a trace in the middle)."""
    if _tracer is None or not traceparent:
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    span = _tracer.start_span(
        name,
        context=parent,
        kind=SpanKind.CLIENT if kind == "client" else SpanKind.INTERNAL,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        start_time=start_ns,
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns if end_ns is not None else time.time_ns())
