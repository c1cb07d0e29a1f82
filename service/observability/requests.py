"""The outermost ASGI layer: every HTTP request gets a request id (X-Request-Id, the client's when well formed),
one log line when it ends, and its place in the request metrics. It wraps Litestar's whole handler, so 404s,
405s and errors raised before routing are seen too."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.types.asgi_types import HTTPScope

from service.observability import metrics, record, turns

access_logger = logging.getLogger("service.access")

_REQUEST_ID_HEADER = b"x-request-id"
_REPLAYED_HEADER = b"idempotent-replayed"
_UNROUTED = "unmatched"


def logged_path(path: str, secrets: Sequence[str] = ()) -> str:
    """The path as logs may show it: keys of our and OpenRouter's shapes, and the service's own secrets
    (ADMIN_API_KEY, which may be any string, and the OpenRouter key), replaced."""
    path = record.without_keys(path)  # a client that put its key (or an OpenRouter key) in the URL by mistake
    for secret in secrets:
        if secret in path:
            path = path.replace(secret, record.REDACTED)
    return path


class RequestObserver:
    def __init__(self, app: ASGIApp, secrets: Sequence[str | None] = ()) -> None:
        self._app = app
        self._secrets = tuple(secret for secret in secrets if secret)

    @property
    def app(self) -> ASGIApp:
        """The wrapped handler (bench/observability_cost.py measures the service without this layer)."""
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]  # websockets (lifespan never comes here)
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        sent_id = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                sent_id = value
                break
        current = record.begin(record.request_id_from(sent_id))
        request_id_header = (_REQUEST_ID_HEADER, current.request_id.encode())
        status = 500
        replayed = False

        async def observed_send(message: Message) -> None:
            nonlocal status, replayed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or ())
                replayed = any(name == _REPLAYED_HEADER for name, _ in headers)
                headers.append(request_id_header)
                message["headers"] = headers
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            _report(scope, current, status, elapsed, replayed=replayed, secrets=self._secrets)  # type: ignore[arg-type]


def _report(
    scope: HTTPScope,
    current: record.RequestRecord,
    status: int,
    seconds: float,
    *,
    replayed: bool,
    secrets: Sequence[str],
) -> None:
    route = scope.get("path_template") or _UNROUTED
    method = scope["method"]
    current.reported = True
    turns.request_ended(current)
    metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
    metrics.HTTP_DURATION.labels(method, route).observe(seconds)
    if replayed:
        metrics.IDEMPOTENT_REPLAYS.inc()
    if current.error_code == "conversation_locked":
        metrics.CONVERSATION_LOCKED.inc()
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "path": (path := logged_path(scope["path"], secrets)),
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "tenant": current.tenant,
    }
    for name in ("conversation_id", "response_id", "error_code", "turn_status", "model"):
        value = getattr(current, name)
        if value is not None:
            fields[name] = value
    if replayed:
        fields["idempotent_replayed"] = True
    if current.upstream_attempts:
        fields["upstream_status"] = current.upstream_status
        fields["upstream_latency_ms"] = current.upstream_latency_ms
        fields["upstream_ttfb_ms"] = current.upstream_ttfb_ms
        fields["upstream_attempts"] = current.upstream_attempts
        if current.upstream_error is not None:
            fields["upstream_error"] = current.upstream_error
        fields["input_tokens"] = current.input_tokens
        fields["output_tokens"] = current.output_tokens
    access_logger.info("%s %s %d", method, path, status, extra={"fields": fields})
