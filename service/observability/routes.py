"""GET /metrics on the main port, for the admin credential (METRICS_PORT serves it without one)."""

from __future__ import annotations

from litestar import Response, get

from service.http import require_admin_key
from service.observability import metrics


@get(
    "/metrics",
    operation_id="metrics",
    before_request=require_admin_key,
    # Prometheus' text exposition format, not JSON: it has no schema to document, and scrapers are configured
    # by URL, not from the OpenAPI document. docs/operations.md lists the metrics.
    include_in_schema=False,
    media_type=metrics.CONTENT_TYPE,
)
async def metrics_route() -> Response[bytes]:
    """Prometheus' text format: requests, turns, upstream, tokens and cost, pool, runs in flight
    (docs/operations.md)."""
    return Response(content=metrics.exposition(), media_type=metrics.CONTENT_TYPE)
