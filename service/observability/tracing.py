"""OpenTelemetry tracing, off unless an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the exporter reads the other standard OTEL_* variables itself).

Spans: one server span per request (Litestar's OpenTelemetry plugin, on the ASGI instrumentation), one per
turn with OpenTelemetry's GenAI attributes (service.observability.turns), the database's statements (asyncpg's
instrumentation: the turn path sends its statements on the driver connection, below SQLAlchemy) and the
upstream call (httpx's instrumentation around the upstream transport), which also sends the trace context
(`traceparent`) to OpenRouter."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from service.observability.requests import logged_path

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


# Set by the ASGI instrumentation from the request's URL; the server span's hook below writes them again from the
# route, without the query string.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.path", "url.query")


def _span_details(scope: Any) -> tuple[str, dict[str, str]]:
    """A server span's name when it starts, before routing: the method alone, as OpenTelemetry's conventions
    name a request whose route is not known; `route_named_spans` adds the route once it is. Named from the raw
    path, there was one span name per conversation, and any key a client put in the URL was in it."""
    return str(scope.get("method", "")).strip() or "HTTP", {}


class RouteNamedSpans:
    """Litestar middleware (run once the request is routed): the server span named `{method} {route template}`
    (`GET /v1/conversations/{conversation_id}/items`), with its `http.route`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        span = trace.get_current_span()
        route = scope.get("path_template")
        if route and span.is_recording():
            span.update_name(f"{scope.get('method', 'HTTP')} {route}")
            span.set_attribute("http.route", route)
        await self.app(scope, receive, send)


def _server_request_hook(secrets: tuple[str, ...]) -> Callable[[Any, Any], None]:
    def hook(span: Any, scope: Any) -> None:
        """The URL attributes as the access log shows the path: the query string left out (a client may put
        its key there), keys and the service's secrets in the path redacted."""
        if span is None or not span.is_recording():
            return
        recorded = getattr(span, "attributes", None) or {}
        path = logged_path(str(scope.get("path", "")), secrets)
        for name in _URL_ATTRIBUTES:
            if name not in recorded:
                continue
            if name in ("http.url", "url.full"):
                scheme, (host, port) = scope.get("scheme", "http"), scope.get("server") or ("", None)
                span.set_attribute(name, f"{scheme}://{host}{'' if port is None else f':{port}'}{path}")
            elif name == "url.query":
                span.set_attribute(name, "")
            else:
                span.set_attribute(name, path)

    return hook


def enable(provider: TracerProvider, secrets: Sequence[str | None] = ()) -> list[Any]:
    """Turn tracing on for this process; returns the Litestar plugins that add the server spans (the app also
    takes RouteNamedSpans as middleware). `secrets`: values never to be shown in a span (ADMIN_API_KEY, the
    OpenRouter key)."""
    global _tracer, _provider  # noqa: PLW0603 - one tracer per process, like OpenTelemetry's own global
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin  # noqa: PLC0415
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

    _provider = provider
    _tracer = provider.get_tracer("service.turns")
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider)
    config = OpenTelemetryConfig(
        tracer_provider=provider,
        scope_span_details_extractor=_span_details,
        server_request_hook_handler=_server_request_hook(tuple(secret for secret in secrets if secret)),
    )
    return [OpenTelemetryPlugin(config)]


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Work started within (the heartbeat, the claim sweeps, the LISTEN connection, retention, webhook deliveries)
    is not traced: its statements were root spans, several a second per process, outnumbering the requests'."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation  # noqa: PLC0415

    with suppress_instrumentation():
        yield


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
