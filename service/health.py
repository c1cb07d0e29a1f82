"""Liveness and readiness; no auth, so load balancers and humans can ask."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from sqlalchemy import text

from service import __version__
from service.http import json_response, runtime_of


@get("/health", operation_id="health", tags=["health"])
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    settings = runtime_of(request).settings
    upstream = "demo" if settings.demo_upstream else "openrouter"
    body = {
        "status": "ok",
        "version": __version__,
        "upstream": upstream,
        "upstream_base_url": None if settings.demo_upstream else settings.openrouter_base_url,
        "database": "embedded" if settings.embedded_database else "external",
    }
    if settings.demo_upstream:
        body["note"] = "No OPENROUTER_API_KEY set: turns are answered by the built-in offline demo upstream."
    return json_response(body)


@get("/ready", operation_id="ready", tags=["health"])
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    try:
        async with runtime_of(request).engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return json_response(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__},
            status_code=503,
        )
    return json_response({"status": "ready", "database": "ok"})
