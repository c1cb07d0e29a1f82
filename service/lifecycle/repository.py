"""SQL for copying conversations in and out: pages of items by position, and a whole new conversation with
its items in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.conversations.repository import insert_items, item_rows, title_from
from service.db.models import conversation_table, item_table, tenant_table
from service.ids import can_exist
from service.items import NewItem

conversation_t = conversation_table
item_t = item_table

_ITEM_COLUMNS = (
    item_t.c.position,
    item_t.c.id,
    item_t.c.type,
    item_t.c.role,
    item_t.c.status,
    item_t.c.body,
    item_t.c.text_content,
)


async def item_page(conn: AsyncConnection, conversation_id: str, after_position: int, limit: int) -> Sequence[Any]:
    """The conversation's items after a position, in order (one range of the (conversation_id, position) index)."""
    stmt = (
        select(*_ITEM_COLUMNS)
        .where(item_t.c.conversation_id == conversation_id, item_t.c.position > after_position)
        .order_by(item_t.c.position)
        .limit(limit)
    )
    return (await conn.execute(stmt)).all()


async def items_through(conn: AsyncConnection, conversation_id: str, item_id: str) -> Sequence[Any] | None:
    """The conversation's items up to and including the named one, in order, read in one statement (one
    snapshot); None when the conversation has no such item."""
    if not can_exist(item_id):
        return None
    anchor = (
        select(item_t.c.position)
        .where(item_t.c.conversation_id == conversation_id, item_t.c.id == item_id)
        .order_by(item_t.c.position)
        .limit(1)
        .scalar_subquery()
    )
    rows = (
        await conn.execute(
            select(*_ITEM_COLUMNS, anchor.label("anchor"))
            .where(item_t.c.conversation_id == conversation_id, item_t.c.position <= anchor)
            .order_by(item_t.c.position)
        )
    ).all()
    if rows:
        return rows
    found = await conn.scalar(
        select(item_t.c.pk).where(item_t.c.conversation_id == conversation_id, item_t.c.id == item_id).limit(1)
    )
    return [] if found is not None else None


async def insert_conversation_with_items(
    conn: AsyncConnection,
    *,
    conversation_id: str,
    tenant_id: str,
    metadata: dict[str, str],
    created_at: int | None,
    items: Sequence[NewItem],
) -> Any:
    """A new conversation holding these items at positions 0..n-1, as one conversation row and one batched
    insert of items."""
    values: dict[str, Any] = {
        "id": conversation_id,
        "tenant_id": tenant_id,
        "metadata": metadata,
        "next_position": len(items),
        "item_count": len(items),
        "title": title_from(items),
    }
    if created_at is not None:
        values["created_at"] = func.to_timestamp(created_at)
    row = (await conn.execute(insert(conversation_t).values(**values).returning(conversation_t))).one()
    await insert_items(conn, item_rows(items, tenant_id=tenant_id, conversation_id=conversation_id, first_position=0))
    return row


async def tenant_id_by_name(conn: AsyncConnection, name: str) -> str | None:
    value = await conn.scalar(select(tenant_table.c.id).where(tenant_table.c.name == name))
    return None if value is None else str(value)


async def conversation_exists(conn: AsyncConnection, conversation_id: str, tenant_id: str | None) -> bool:
    if not can_exist(conversation_id):
        return False
    stmt = select(conversation_t.c.id).where(conversation_t.c.id == conversation_id)
    if tenant_id is not None:
        stmt = stmt.where(conversation_t.c.tenant_id == tenant_id)
    return (await conn.scalar(stmt)) is not None


async def conversation_page(
    conn: AsyncConnection, *, tenant_id: str | None, conversation_id: str | None, after_id: str, limit: int
) -> Sequence[Any]:
    """Conversations in id order after `after_id` (one range of the primary key), with their tenant's name."""
    stmt = (
        select(conversation_t, tenant_table.c.name.label("tenant"))
        .join(tenant_table, tenant_table.c.id == conversation_t.c.tenant_id)
        .where(conversation_t.c.id > after_id)
        .order_by(conversation_t.c.id)
        .limit(limit)
    )
    if tenant_id is not None:
        stmt = stmt.where(conversation_t.c.tenant_id == tenant_id)
    if conversation_id is not None:
        stmt = stmt.where(conversation_t.c.id == conversation_id)
    return (await conn.execute(stmt)).all()
