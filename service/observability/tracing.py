"""OpenTelemetry tracing, off unless an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the exporter reads the other standard OTEL_* variables itself).

Spans: one server span per request (Litestar's OpenTelemetry plugin, on the ASGI instrumentation), one per
turn with OpenTelemetry's GenAI attributes (service.observability.turns), the database's statements (asyncpg's
instrumentation: the turn path sends its statements on the driver connection, below SQLAlchemy) and the
upstream call (httpx's instrumentation around the upstream transport), which also sends the trace context
(`traceparent`) to OpenRouter."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx
from opentelemetry.trace import Tracer, TracerProvider

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def configured(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_environment() -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; convstore is the default name.
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "convstore"})
    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def enable(provider: TracerProvider) -> list[Any]:
    """Turn tracing on for this process; returns the Litestar plugins that add the server spans."""
    global _tracer, _provider  # noqa: PLW0603 - one tracer per process, like OpenTelemetry's own global
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin  # noqa: PLC0415
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

    _provider = provider
    _tracer = provider.get_tracer("service.turns")
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    return [OpenTelemetryPlugin(OpenTelemetryConfig(tracer_provider=provider))]


def disable() -> None:
    global _tracer, _provider  # noqa: PLW0603
    if _tracer is None:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

    _tracer = None
    _provider = None
    AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]


def tracer() -> Tracer | None:
    return _tracer


def wrap_transport(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """The upstream transport, traced (and propagating the trace context) when tracing is on."""
    if _provider is None:
        return transport
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport  # noqa: PLC0415

    traced: httpx.AsyncBaseTransport = AsyncOpenTelemetryTransport(transport, tracer_provider=_provider)
    return traced
