"""Admin operations on retention: a tenant's policy, its preview, a run now, the job's state."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.config import Settings
from service.errors import Conflict, NotFound
from service.retention import purge, repository
from service.retention.policy import default_policy, effective, parse_policy, policy_view


async def _tenant(conn: AsyncConnection, name: str) -> Any:
    # No tenant's name holds U+0000 (PostgreSQL's text cannot): the console's form reaches here without the door
    # that refuses it in a path or query, and the lookup was a 500.
    row = None if "\x00" in name else await repository.tenant_by_name(conn, name)
    if row is None:
        raise NotFound(f"Tenant '{name}' not found.", param="tenant")
    return row


async def get_policy(engine: AsyncEngine, settings: Settings, tenant: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = await _tenant(conn, tenant)
        policy = effective(await repository.get_policy(conn, row.id), settings)
    return policy_view(row.name, policy)


async def put_policy(engine: AsyncEngine, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    policy = parse_policy(body)
    async with engine.begin() as conn:
        row = await _tenant(conn, tenant)
        await repository.put_policy(conn, row.id, policy.responses_days, policy.conversations_idle_days)
    return policy_view(row.name, policy)


async def delete_policy(engine: AsyncEngine, settings: Settings, tenant: str) -> dict[str, Any]:
    """Back to the service-wide defaults."""
    async with engine.begin() as conn:
        row = await _tenant(conn, tenant)
        await repository.delete_policy(conn, row.id)
    return policy_view(row.name, default_policy(settings))


async def preview(engine: AsyncEngine, settings: Settings, tenant: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = await _tenant(conn, tenant)
        policy = effective(await repository.get_policy(conn, row.id), settings)
        counts = await repository.preview(conn, row.id, policy.responses_days, policy.conversations_idle_days)
    return {
        "object": "retention.preview",
        "tenant": row.name,
        "responses": int(counts.responses),
        "conversations": int(counts.conversations),
        "items": int(counts.items),
    }


async def run_now(engine: AsyncEngine, settings: Settings, *, process_id: str) -> dict[str, Any]:
    result = await purge.purge(engine, settings, process_id=process_id)
    if result is None:
        raise Conflict(
            "A retention run is already under way (in this or another process); retry when it has finished.",
            code="retention_running",
        )
    return result


async def state(engine: AsyncEngine, settings: Settings) -> dict[str, Any]:
    async with engine.connect() as conn:
        lease = await repository.lease_state(conn, purge.LEASE)
    defaults = default_policy(settings)
    return {
        "object": "retention",
        "defaults": {
            "responses_days": defaults.responses_days,
            "conversations_idle_days": defaults.conversations_idle_days,
        },
        "interval_seconds": settings.retention_interval_seconds,
        "running": bool(lease is not None and lease.running),
        "last_run_at": None if lease is None or lease.last_run_at is None else int(lease.last_run_at.timestamp()),
        "last_run": None if lease is None else lease.last_result,
    }
