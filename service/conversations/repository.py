"""SQL for conversations and their items. Every statement is scoped by tenant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import conversation_table, deleted_item_position_table, item_table, response_table
from service.db.ownership import owned_by
from service.db.visibility import not_deleted
from service.ids import can_exist
from service.items import NewItem
from service.pagination import PageRequest, keyset_page
from service.responses.status import ANSWERED, answered_sql

conversation_t = conversation_table
item_t = item_table
response_t = response_table

TITLE_LENGTH = 80


def title_from(items: Sequence[NewItem]) -> str | None:
    for item in items:
        if item.type == "message" and item.role == "user" and item.text_content.strip():
            return title_of(item.text_content)
    return None


def title_of(text_content: str) -> str:
    """A conversation's title: its first user message's text on one line, cut at TITLE_LENGTH."""
    text = " ".join(text_content.split())
    return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1] + "…"


async def insert_conversation(
    conn: AsyncConnection, *, conversation_id: str, tenant_id: str, metadata: dict[str, str]
) -> Any:
    return (
        await conn.execute(
            insert(conversation_t)
            .values(id=conversation_id, tenant_id=tenant_id, metadata=metadata)
            .returning(conversation_t)
        )
    ).one()


async def get_conversation(conn: AsyncConnection, tenant_id: str, conversation_id: str, *, hold: bool = False) -> Any:
    """`hold`: the row stays share-locked on its key for the rest of the transaction, so it cannot be deleted
    and no item deleted (those lock the row for update) until then; turns, which do not change the key, go on."""
    if not can_exist(conversation_id):
        return None
    stmt = select(conversation_t).where(
        conversation_t.c.id == conversation_id,
        owned_by(conversation_t.c.tenant_id, tenant_id),
        not_deleted(conversation_t),
    )
    if hold:
        stmt = stmt.with_for_update(key_share=True)
    return (await conn.execute(stmt)).first()


async def lock_conversation(conn: AsyncConnection, tenant_id: str | None, conversation_id: str) -> Any:
    """The conversation row with a row lock for the rest of this (short) transaction, and whether a turn's
    claim on it is still live. `tenant_id` None: any tenant's, one its tenant deleted included (the admin API's
    hard delete, which erases what such a conversation still keeps as its responses' history)."""
    if not can_exist(conversation_id):
        return None
    live_claim = and_(
        conversation_t.c.turn_response_id.is_not(None), conversation_t.c.turn_expires_at > func.now()
    ).label("claimed")
    stmt = select(conversation_t, live_claim).where(conversation_t.c.id == conversation_id)
    if tenant_id is None:
        stmt = stmt.where(conversation_t.c.purging_since.is_(None))
    else:
        stmt = stmt.where(owned_by(conversation_t.c.tenant_id, tenant_id), not_deleted(conversation_t))
    return (await conn.execute(stmt.with_for_update())).first()


async def update_metadata(conn: AsyncConnection, tenant_id: str, conversation_id: str, metadata: dict[str, str]) -> Any:
    if not can_exist(conversation_id):
        return None
    stmt = (
        update(conversation_t)
        .where(
            conversation_t.c.id == conversation_id,
            owned_by(conversation_t.c.tenant_id, tenant_id),
            not_deleted(conversation_t),
        )
        .values(metadata=metadata, updated_at=func.now())
        .returning(conversation_t)
    )
    return (await conn.execute(stmt)).first()


# The responses a deleted conversation keeps its items for: those that answered (responses/status.py). A failed or
# cancelled turn added nothing to the conversation, and no chain can build on it.
_CONTINUABLE = answered_sql("status")


async def delete_conversation(conn: AsyncConnection, tenant_id: str, conversation_id: str) -> None:
    """Delete the tenant's conversation (found, and its row locked, by lock_free_conversation). Its responses stay,
    with the items they carried (as OpenAI does: their input_items still list them), and they can still be
    continued: while one of them is stored, the conversation is only marked deleted and keeps the items before its
    last one, the history a chain continuing them replays. Otherwise it goes with its own items at once."""
    continuable = exists().where(response_t.c.conversation_id == conversation_id, response_t.c.status.in_(ANSWERED))
    if await conn.scalar(select(continuable)):
        # An expired claim goes too: the late finish of its turn then finds no claim, and stores its response
        # outside the conversation, as it did when the row was gone.
        await conn.execute(
            update(conversation_t)
            .where(conversation_t.c.id == conversation_id)
            .values(deleted_at=func.now(), turn_response_id=None, turn_expires_at=None, turn_claimed_at=None)
        )
        await settle_deleted_conversation(conn, conversation_id)
        return
    # An item a response carried stays with that response (the row's delete cascades to the others).
    await conn.execute(
        update(item_t)
        .where(item_t.c.conversation_id == conversation_id, owned_by(item_t.c.tenant_id, tenant_id))
        .where(item_t.c.response_id.is_not(None))
        .values(conversation_id=None, position=None)
    )
    await conn.execute(
        delete(conversation_t).where(
            conversation_t.c.id == conversation_id, owned_by(conversation_t.c.tenant_id, tenant_id)
        )
    )


async def lock_for_response_delete(conn: AsyncConnection, conversation_id: str) -> None:
    """Lock the conversation of a response about to be deleted, before the response: every path that locks both
    (a turn's finish, a conversation's delete, an operator's hard delete) takes the conversation first, and the
    response's delete may have to settle it (settle_deleted_conversation)."""
    await conn.execute(select(conversation_t.c.id).where(conversation_t.c.id == conversation_id).with_for_update())


# A deleted conversation keeps the items before its last continuable response's position, the history of that
# response and of the ones before it (each response carries its own items); the items added directly after it
# were no one's history. The row is locked first, in its own statement, so that the trim and the delete read
# afresh what the transactions before them committed. A row another transaction holds is skipped, never waited
# for: it may hold responses this one wants (an operator's hard delete locks the conversation, then its
# responses) or be deleting them itself. A skipped trim waits for the conversation's next settling; a conversation
# left with no response, the retention run finishes (conversations_to_finish). One conversation per statement, by
# primary key: a plan for an array of ids may read the whole table.
_LOCK_DELETED = text("SELECT id FROM conversation WHERE id = :id AND deleted_at IS NOT NULL FOR UPDATE SKIP LOCKED")

_TRIM_DELETED = text(
    f"""
    DELETE FROM item
    WHERE conversation_id = :id AND response_id IS NULL AND position >= coalesce(
        (SELECT max(conversation_position) FROM response WHERE conversation_id = :id AND {_CONTINUABLE}), 0)
    """
)

_NEEDED = f"EXISTS (SELECT 1 FROM response WHERE conversation_id = :id AND {_CONTINUABLE})"

# Once no response needs it: as a conversation's delete does, an item a response carried stays with it.
_DETACH_UNNEEDED = text(
    f"""
    UPDATE item SET conversation_id = NULL, position = NULL
    WHERE conversation_id = :id AND response_id IS NOT NULL AND NOT {_NEEDED}
    """
)

_DELETE_UNNEEDED = text(f"DELETE FROM conversation WHERE id = :id AND deleted_at IS NOT NULL AND NOT {_NEEDED}")

# Deleted conversations no response needs any more, whose settling was skipped (their row was held), on the
# partial index of deleted conversations.
_TO_FINISH = text(
    f"""
    SELECT id FROM conversation c
    WHERE deleted_at IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM response r WHERE r.conversation_id = c.id AND {answered_sql("r.status")})
    ORDER BY deleted_at, id LIMIT :limit
    """
)


async def settle_deleted_conversation(conn: AsyncConnection, conversation_id: str) -> int:
    """After a response of this conversation went (or the conversation was deleted): if its tenant deleted it, it
    keeps only the items its remaining responses need, and goes once none is left (the items responses carried
    stay with them). Returns how many items went."""
    if (await conn.execute(_LOCK_DELETED, {"id": conversation_id})).first() is None:
        return 0
    trimmed = (await conn.execute(_TRIM_DELETED, {"id": conversation_id})).rowcount
    await conn.execute(_DETACH_UNNEEDED, {"id": conversation_id})
    await conn.execute(_DELETE_UNNEEDED, {"id": conversation_id})
    return int(trimmed)


async def conversations_to_finish(conn: AsyncConnection, *, limit: int) -> list[str]:
    """Deleted conversations whose last continuable response went while another transaction held their row."""
    return list((await conn.scalars(_TO_FINISH, {"limit": limit})).all())


def item_rows(
    items: Sequence[NewItem],
    *,
    tenant_id: str,
    response_id: str | None = None,
    is_output: bool = False,
    first_ordinal: int = 0,
    conversation_id: str,
    first_position: int | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "id": item.id,
            "tenant_id": tenant_id,
            "response_id": response_id,
            "is_output": is_output,
            "ordinal": first_ordinal + index,
            "conversation_id": conversation_id,
            "position": None if first_position is None else first_position + index,
            "thread_id": conversation_id,  # the conversation is the thread
            "type": item.type,
            "role": item.role,
            "status": item.status,
            "body": item.body,
            "text_content": item.text_content,
            "token_count": item.token_count,
        }
        for index, item in enumerate(items)
    ]


async def insert_items(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(item_t), rows)


async def stored_bytes(conn: AsyncConnection, conversation_id: str) -> int:
    """The characters of stored JSON the conversation's items hold (what a turn reads as its history)."""
    total = func.coalesce(func.sum(func.length(item_t.c.body)), 0)
    value = await conn.scalar(select(total).where(item_t.c.conversation_id == conversation_id))
    return int(value or 0)


async def advance_conversation(conn: AsyncConnection, conversation_id: str, *, added: int, title: str | None) -> int:
    """Reserve `added` positions at the end of the conversation (its row is locked); returns the first one.
    A turn's finish does the same in its own statement (responses/turn_store.py)."""
    values: dict[str, Any] = {
        "next_position": conversation_t.c.next_position + added,
        "item_count": conversation_t.c.item_count + added,
        "updated_at": func.now(),
        "title": func.coalesce(conversation_t.c.title, title),
    }
    stmt = (
        update(conversation_t)
        .where(conversation_t.c.id == conversation_id)
        .values(**values)
        .returning(conversation_t.c.next_position)
    )
    end = await conn.scalar(stmt)
    return int(end) - added


async def list_items(conn: AsyncConnection, conversation_id: str, page: PageRequest, after_position: int | None) -> Any:
    stmt = select(item_t.c.id, item_t.c.status, item_t.c.body).where(item_t.c.conversation_id == conversation_id)
    return (await conn.execute(keyset_page(stmt, item_t.c.position, page, after_position))).all()


async def first_held_id(
    conn: AsyncConnection, tenant_id: str, conversation_id: str, item_ids: Sequence[str]
) -> str | None:
    """One of `item_ids` the tenant's conversation holds already, if any."""
    stmt = (
        select(item_t.c.id)
        .where(
            item_t.c.conversation_id == conversation_id,
            item_t.c.id.in_(sorted(set(item_ids))),
            owned_by(item_t.c.tenant_id, tenant_id),
        )
        .limit(1)
    )
    found: str | None = await conn.scalar(stmt)
    return found


async def find_item(conn: AsyncConnection, conversation_id: str, item_id: str) -> Any:
    if not can_exist(item_id):
        return None
    stmt = (
        select(
            item_t.c.pk,
            item_t.c.id,
            item_t.c.type,
            item_t.c.role,
            item_t.c.status,
            item_t.c.body,
            item_t.c.position,
            item_t.c.response_id,
        )
        .where(item_t.c.conversation_id == conversation_id, item_t.c.id == item_id)
        .order_by(item_t.c.position)
        .limit(1)
    )
    return (await conn.execute(stmt)).first()


async def deleted_position(conn: AsyncConnection, conversation_id: str, item_id: str) -> int | None:
    """Where an item deleted from the conversation stood (remove_item keeps it)."""
    table = deleted_item_position_table
    stmt = select(table.c.position).where(table.c.conversation_id == conversation_id, table.c.item_id == item_id)
    position: int | None = await conn.scalar(stmt)
    return position


async def item_bodies_by_id(conn: AsyncConnection, tenant_id: str, item_ids: Sequence[str]) -> dict[str, str]:
    """The stored JSON text of the tenant's items with these ids that a client can still see: in a conversation
    (not being purged), or carried by a response not deleted. A deleted response kept hidden as a later one's
    history is gone for the client, and so are the items only it carries. Where an id was stored more than once
    (an item replayed as input), the first one stored."""
    wanted = sorted({i for i in item_ids if can_exist(i)})
    if not wanted:
        return {}
    visible = or_(
        and_(item_t.c.conversation_id.is_not(None), not_deleted(conversation_t)),
        and_(item_t.c.response_id.is_not(None), response_t.c.deleted_at.is_(None)),
    )
    stmt = (
        select(item_t.c.id, item_t.c.body)
        .outerjoin(conversation_t, conversation_t.c.id == item_t.c.conversation_id)
        .outerjoin(response_t, response_t.c.id == item_t.c.response_id)
        .where(item_t.c.tenant_id == tenant_id, item_t.c.id.in_(wanted), visible)
        .order_by(item_t.c.pk)
    )
    bodies: dict[str, str] = {}
    for row in await conn.execute(stmt):
        bodies.setdefault(row.id, row.body)
    return bodies


async def remove_item(conn: AsyncConnection, conversation_id: str, item: Any) -> None:
    """Take `item` (a find_item row) out of the conversation: deleted, or left to the response that carried it.
    A user message may have given the conversation its title: the title is then taken again from what is left,
    so that the deleted text stays nowhere."""
    if item.response_id is not None:
        await conn.execute(update(item_t).where(item_t.c.pk == item.pk).values(conversation_id=None, position=None))
    else:
        await conn.execute(delete(item_t).where(item_t.c.pk == item.pk))
    # Where it stood, for a page cursor that names it (deleted_position): the place it was deleted from last.
    # An id may be added back once deleted (and deleted again), or be stored twice: a cursor naming it named the
    # copy deleted now (find_item's), so that is where a page after it goes on from.
    kept = {"conversation_id": conversation_id, "item_id": item.id, "position": item.position}
    upsert = pg_insert(deleted_item_position_table).values(kept)
    await conn.execute(
        upsert.on_conflict_do_update(
            index_elements=["conversation_id", "item_id"], set_={"position": upsert.excluded.position}
        )
    )
    values: dict[str, Any] = {"item_count": conversation_t.c.item_count - 1, "updated_at": func.now()}
    if item.type == "message" and item.role == "user":
        values["title"] = await first_user_title(conn, conversation_id)
    await conn.execute(update(conversation_t).where(conversation_t.c.id == conversation_id).values(**values))


_FIRST_USER_TEXT = text(
    """
    SELECT text_content FROM item
    WHERE conversation_id = :c AND type = 'message' AND role = 'user' AND btrim(text_content) <> ''
    ORDER BY position LIMIT 1
    """
)


async def first_user_title(conn: AsyncConnection, conversation_id: str) -> str | None:
    """The title the conversation's items give it now (title_of its first user message's text), if any."""
    first_user_text = await conn.scalar(_FIRST_USER_TEXT, {"c": conversation_id})
    return None if first_user_text is None else title_of(first_user_text)
