"""Liveness and readiness; no auth, so load balancers and humans can ask."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Response, get
from sqlalchemy import text

from service import __version__
from service.http import EngineDep, RuntimeDep, json_response
from service.openapi import documented


class Health(msgspec.Struct):
    status: Literal["ok"]
    version: str
    upstream: Literal["demo", "openrouter"]
    upstream_base_url: str | None
    database: Literal["embedded", "external"]
    note: str | None = None


class Ready(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unreachable", "not_migrated"]
    detail: str | None = None


@get(
    "/health",
    operation_id="health",
    tags=["health"],
    security=[],
    operation_class=documented(answer=Health, public=True),
)
async def health(runtime: RuntimeDep) -> Response[bytes]:
    settings = runtime.settings
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


@get(
    "/ready", operation_id="ready", tags=["health"], security=[], operation_class=documented(answer=Ready, public=True)
)
async def ready(engine: EngineDep) -> Response[bytes]:
    """503 with the same shape when the database cannot be reached, or holds no schema (re-created empty under a
    running process: every request would fail). Not a revision check: during a rolling upgrade the processes of
    the release before stay ready on a schema migrated ahead of them."""
    try:
        async with engine.connect() as conn:
            migrated = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    except Exception as exc:
        return json_response(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__},
            status_code=503,
        )
    if not migrated:
        return json_response(
            {"status": "unavailable", "database": "not_migrated", "detail": "run `python -m service migrate`"},
            status_code=503,
        )
    return json_response({"status": "ready", "database": "ok"})
