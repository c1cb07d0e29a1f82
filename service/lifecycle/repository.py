"""SQL for copying conversations in and out: pages of items by position, and a whole new conversation with
its items in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from service.conversations.repository import first_user_title, title_from
from service.db.models import conversation_table, item_table, tenant_table
from service.db.ownership import owned_by
from service.db.visibility import not_deleted
from service.ids import can_exist
from service.items import NewItem, item_arrays

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


# A fork's copies, made by the database in one statement: each item gets a new id (the old one's prefix, 48 bits
# of milliseconds and 120 random bits, as service/ids.py makes them), in the place the old id was kept: inside
# the JSON text when it is there (`"id":<old>`, the old id encoded as JSON, which escapes as the service's encoder
# does; quotes inside strings are escaped, so the text can only be that key), else only in the column. Everything
# else is copied as is, positions renumbered.
_COPY_ITEMS_THROUGH = text(
    """
    WITH copied AS (
        SELECT i.position, i.type, i.role, i.status, i.body, i.text_content, i.token_count,
               strpos(i.body, '"id":' || to_jsonb(i.id)::text) AS at, length(to_jsonb(i.id)::text) AS old_length,
               CASE WHEN i.id ~ '^[A-Za-z0-9]{1,8}_' THEN split_part(i.id, '_', 1) ELSE 'item' END
               || '_' || lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
               || left(replace(gen_random_uuid()::text, '-', ''), 30) AS new_id
        FROM item i
        WHERE i.conversation_id = :source AND i.position <= :through
    )
    INSERT INTO item (id, tenant_id, conversation_id, thread_id, position, type, role, status, body, text_content,
                      token_count)
    SELECT new_id, :tenant, :target, :target, row_number() OVER (ORDER BY position) - 1, type, role, status,
           CASE WHEN at > 0 THEN overlay(body PLACING '"' || new_id || '"' FROM at + 5 FOR old_length) ELSE body END,
           text_content, token_count
    FROM copied
    """
).bindparams(bindparam("through", type_=BigInteger))


async def item_position(conn: AsyncConnection, conversation_id: str, item_id: str) -> int | None:
    if not can_exist(item_id):
        return None
    stmt = (
        select(item_t.c.position)
        .where(item_t.c.conversation_id == conversation_id, item_t.c.id == item_id)
        .order_by(item_t.c.position)
        .limit(1)
    )
    value = await conn.scalar(stmt)
    return None if value is None else int(value)


async def items_through(conn: AsyncConnection, conversation_id: str, through: int) -> tuple[int, int]:
    """How many items the conversation holds up to position `through`, and their characters of stored JSON."""
    stmt = select(func.count(), func.coalesce(func.sum(func.length(item_t.c.body)), 0)).where(
        item_t.c.conversation_id == conversation_id, item_t.c.position <= through
    )
    count, size = (await conn.execute(stmt)).one()
    return int(count), int(size)


async def copy_items_into(
    conn: AsyncConnection, *, source: str, through: int, target: str, tenant_id: str, metadata: dict[str, str]
) -> Any:
    """A new conversation `target` holding copies of the source's items up to position `through`: the
    conversation row, one INSERT ... SELECT of the items, then its counts and title."""
    await conn.execute(insert(conversation_t).values(id=target, tenant_id=tenant_id, metadata=metadata))
    copied = await conn.execute(
        _COPY_ITEMS_THROUGH, {"source": source, "through": through, "target": target, "tenant": tenant_id}
    )
    count = copied.rowcount
    values = {
        "next_position": count,
        "item_count": count,
        "title": await first_user_title(conn, target),
        "updated_at": func.now(),
    }
    stmt = update(conversation_t).where(conversation_t.c.id == target).values(**values).returning(conversation_t)
    return (await conn.execute(stmt)).one()


# An import's items in one statement: the columns as arrays, unnested in order (positions 0..n-1). Much cheaper
# than a multi-row VALUES per batch for the thousands of items of a long conversation.
_INSERT_ITEMS = text(
    """
    INSERT INTO item (id, tenant_id, conversation_id, thread_id, position, type, role, status, body, text_content,
                      token_count)
    SELECT u.id, :tenant, :conversation, :conversation, :first + u.ord - 1, u.type, u.role, u.status, u.body,
           u.text_content, u.token_count
    FROM unnest(:ids, :types, :roles, :statuses, :bodies, :texts, :token_counts)
         WITH ORDINALITY AS u(id, type, role, status, body, text_content, token_count, ord)
    """
).bindparams(
    *(bindparam(name, type_=ARRAY(Text)) for name in ("ids", "types", "roles", "statuses", "bodies", "texts")),
    bindparam("token_counts", type_=ARRAY(Integer)),
    bindparam("first", type_=Integer),
)
# Items per insert: encoding one statement's arrays holds the event loop, so a large import is sent in parts.
_ITEMS_PER_INSERT = 5_000


async def insert_conversation_with_items(
    conn: AsyncConnection,
    *,
    conversation_id: str,
    tenant_id: str,
    metadata: dict[str, str],
    created_at: int | None,
    items: Sequence[NewItem],
) -> Any:
    """A new conversation holding these items at positions 0..n-1: its row, then its items, a part at a time."""
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
    for first in range(0, len(items), _ITEMS_PER_INSERT):
        columns = item_arrays(items[first : first + _ITEMS_PER_INSERT])
        await conn.execute(
            _INSERT_ITEMS, {"tenant": tenant_id, "conversation": conversation_id, "first": first, **columns}
        )
    return row


async def tenant_id_by_name(conn: AsyncConnection, name: str) -> str | None:
    value = await conn.scalar(select(tenant_table.c.id).where(tenant_table.c.name == name))
    return None if value is None else str(value)


async def conversation_exists(conn: AsyncConnection, conversation_id: str, tenant_id: str | None) -> bool:
    if not can_exist(conversation_id):
        return False
    stmt = select(conversation_t.c.id).where(conversation_t.c.id == conversation_id, not_deleted(conversation_t))
    if tenant_id is not None:
        stmt = stmt.where(owned_by(conversation_t.c.tenant_id, tenant_id))
    return (await conn.scalar(stmt)) is not None


async def conversation_page(
    conn: AsyncConnection, *, tenant_id: str | None, conversation_id: str | None, after_id: str, limit: int
) -> Sequence[Any]:
    """Conversations in id order after `after_id` (one range of the primary key), with their tenant's name."""
    stmt = (
        select(conversation_t, tenant_table.c.name.label("tenant"))
        .join(tenant_table, tenant_table.c.id == conversation_t.c.tenant_id)
        .where(conversation_t.c.id > after_id, not_deleted(conversation_t))
        .order_by(conversation_t.c.id)
        .limit(limit)
    )
    if tenant_id is not None:
        stmt = stmt.where(conversation_t.c.tenant_id == tenant_id)
    if conversation_id is not None:
        stmt = stmt.where(conversation_t.c.id == conversation_id)
    return (await conn.execute(stmt)).all()
