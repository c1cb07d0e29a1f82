"""Liveness and readiness; no auth, so load balancers and humans can ask."""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Response, get, head
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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
    body, status_code = await _readiness(engine)
    return json_response(body, status_code=status_code)


async def _readiness(engine: AsyncEngine) -> tuple[dict[str, str], int]:
    try:
        async with engine.connect() as conn:
            migrated = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    except Exception as exc:
        return {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__}, 503
    if not migrated:
        return {"status": "unavailable", "database": "not_migrated", "detail": "run `python -m service migrate`"}, 503
    return {"status": "ready", "database": "ok"}, 200


# Load balancers that probe with HEAD get the GET's status (HTTP: HEAD goes wherever GET does), without a body.
@head("/health", include_in_schema=False, security=[])
async def health_head() -> Response[None]:
    return Response(None, status_code=200)


@head("/ready", include_in_schema=False, security=[])
async def ready_head(engine: EngineDep) -> Response[None]:
    return Response(None, status_code=(await _readiness(engine))[1])
