"""SQL for tenants and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import api_key_table, tenant_table
from service.ids import new_id

tenant_t = tenant_table
key_t = api_key_table


async def tenant_id_named(conn: AsyncConnection, name: str) -> str | None:
    found = await conn.scalar(select(tenant_t.c.id).where(tenant_t.c.name == name))
    return None if found is None else str(found)


async def get_or_create_tenant(conn: AsyncConnection, name: str) -> str:
    """`name` as service.keys.service.tenant_name_to_store gives it."""
    existing = await conn.scalar(select(tenant_t.c.id).where(tenant_t.c.name == name))
    if existing is not None:
        return str(existing)
    from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: PLC0415

    stmt = pg_insert(tenant_t).values(id=new_id("ten"), name=name).on_conflict_do_nothing()
    await conn.execute(stmt)
    return str(await conn.scalar(select(tenant_t.c.id).where(tenant_t.c.name == name)))


async def tenant_name(conn: AsyncConnection, tenant_id: str) -> str | None:
    value = await conn.scalar(select(tenant_t.c.name).where(tenant_t.c.id == tenant_id))
    return None if value is None else str(value)


async def insert_key(
    conn: AsyncConnection, *, tenant_id: str, name: str, prefix: str, key_hash: bytes, is_admin: bool
) -> dict[str, Any]:
    row = (
        await conn.execute(
            insert(key_t)
            .values(
                id=new_id("key"),
                tenant_id=tenant_id,
                name=name,
                prefix=prefix,
                key_hash=key_hash,
                is_admin=is_admin,
            )
            .returning(key_t.c.id, key_t.c.created_at)
        )
    ).one()
    return {"id": row.id, "created_at": row.created_at}


async def find_active_key(conn: AsyncConnection, key_hash: bytes) -> Any:
    stmt = (
        select(key_t.c.id, key_t.c.tenant_id, key_t.c.is_admin, key_t.c.key_hash, tenant_t.c.name)
        .join(tenant_t, tenant_t.c.id == key_t.c.tenant_id)
        .where(key_t.c.key_hash == key_hash, key_t.c.revoked_at.is_(None))
    )
    return (await conn.execute(stmt)).first()


async def touch_key(conn: AsyncConnection, key_id: str) -> None:
    await conn.execute(update(key_t).where(key_t.c.id == key_id).values(last_used_at=func.now()))


async def list_keys(conn: AsyncConnection, *, tenant: str | None = None) -> list[Any]:
    stmt = (
        select(
            key_t.c.id,
            key_t.c.name,
            key_t.c.prefix,
            key_t.c.is_admin,
            key_t.c.created_at,
            key_t.c.last_used_at,
            key_t.c.revoked_at,
            tenant_t.c.name.label("tenant"),
        )
        .join(tenant_t, tenant_t.c.id == key_t.c.tenant_id)
        .order_by(key_t.c.created_at, key_t.c.id)
    )
    if tenant is not None:
        stmt = stmt.where(or_(tenant_t.c.name == tenant, tenant_t.c.id == tenant))
    return list((await conn.execute(stmt)).all())


async def tenant_exists(conn: AsyncConnection, tenant: str) -> bool:
    """A tenant by name or by id."""
    found = await conn.scalar(select(tenant_t.c.id).where(or_(tenant_t.c.name == tenant, tenant_t.c.id == tenant)))
    return found is not None


async def revoke_key(conn: AsyncConnection, key_id: str) -> datetime | None:
    """Revoke a key; returns when it was revoked (now, or earlier if it already was), None if unknown."""
    revoked = await conn.scalar(
        update(key_t)
        .where(key_t.c.id == key_id, key_t.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(key_t.c.revoked_at)
    )
    if revoked is None:
        revoked = await conn.scalar(select(key_t.c.revoked_at).where(key_t.c.id == key_id))
    return cast("datetime | None", revoked)


async def count_keys(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(key_t)) or 0)
