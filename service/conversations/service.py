"""Conversations and their items (OpenAI's Conversations API). Each change is one short transaction."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.conversations import repository
from service.errors import Conflict, InvalidRequest, NotFound
from service.idempotency import repository as idempotency_keys
from service.ids import new_id
from service.items import (
    ITEM_REFERENCE,
    NewItem,
    duplicate_item,
    item_view,
    normalize_input,
    refuse_duplicate_ids,
    resolve_reference,
)
from service.jsonbody import MAX_JSON_DEPTH, nests_too_deep
from service.limits.sizes import ConversationCaps
from service.metadata import validate_metadata
from service.pagination import PageRequest, item_list, item_page

MAX_ITEMS_PER_CALL = 20


def conversation_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "conversation",
        "created_at": int(row.created_at.timestamp()),
        "metadata": row.metadata,
    }


def conversation_not_found(conversation_id: str, param: str | None = None) -> NotFound:
    return NotFound(f"Conversation with id '{conversation_id}' not found.", param=param)


def conversation_locked(conversation_id: str) -> Conflict:
    return Conflict(
        f"Another request is currently operating on conversation '{conversation_id}'. "
        "Retry when its turn has finished.",
        param="conversation",
        code="conversation_locked",
        headers={"Retry-After": "1"},
    )


async def lock_free_conversation(conn: AsyncConnection, tenant_id: str | None, conversation_id: str) -> Any:
    """The conversation's row, locked for the rest of the transaction; 404 when missing (or another tenant's),
    409 while a turn holds it (changing it under a running turn would leave the turn's answer nowhere to go;
    the claim expires). `tenant_id` None: any tenant's (the admin API)."""
    row = await repository.lock_conversation(conn, tenant_id, conversation_id)
    if row is None:
        raise conversation_not_found(conversation_id)
    if row.claimed:
        raise conversation_locked(conversation_id)
    return row


def _items_param(value: Any, param: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{param} must be an array of items", param=param)
    if len(value) > MAX_ITEMS_PER_CALL:
        raise InvalidRequest(
            f"{param} has {len(value)} items; at most {MAX_ITEMS_PER_CALL} can be added per call",
            param=param,
            code="too_many_items",
        )
    return value


async def resolve_item_references(
    conn: AsyncConnection, tenant_id: str, items: list[NewItem], *, param: str
) -> list[NewItem]:
    """Replace each item_reference by the tenant's stored item it names (one query for all of them)."""
    wanted = [item.id for item in items if item.type == ITEM_REFERENCE]
    if not wanted:
        return items
    stored = await repository.item_bodies_by_id(conn, tenant_id, wanted)
    resolved = []
    for index, item in enumerate(items):
        if item.type != ITEM_REFERENCE:
            resolved.append(item)
        elif item.id in stored:
            if nests_too_deep(stored[item.id].encode()):
                # Stored before bodies had a depth limit: decoding it would meet Python's recursion limit.
                raise InvalidRequest(
                    f"Item with id '{item.id}' is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects "
                    "and cannot be referenced; send its content instead.",
                    param=f"{param}[{index}].id",
                    code="json_too_deep",
                )
            resolved.append(resolve_reference(stored[item.id]))
        else:
            raise NotFound(  # 404, as OpenAI answers a reference to an item it does not hold
                f"Item with id '{item.id}' not found.", param=f"{param}[{index}].id", code="item_not_found"
            )
    return resolved


async def refuse_ids_held(
    conn: AsyncConnection, tenant_id: str, conversation_id: str, items: list[NewItem], *, param: str
) -> None:
    """Items join a conversation only under ids it does not hold (nor the input twice): its items are listed by
    id, so one id stored twice would make the pages after it repeat or skip items."""
    refuse_duplicate_ids(items, param=param)
    given = [item.id for item in items if item.id_given]
    if given and (held := await repository.first_held_id(conn, tenant_id, conversation_id, given)) is not None:
        raise duplicate_item(held, param)


def _refuse_beyond_caps(
    caps: ConversationCaps, conversation_id: str, held_items: int, held_bytes: int, raw_items: list[Any]
) -> None:
    """A conversation holding `held_items` items of `held_bytes` bytes takes `raw_items` within its caps."""
    size = held_bytes + len(msgspec.json.encode(raw_items)) if caps.max_bytes else 0
    refusal = caps.excess(conversation_id, held_items + len(raw_items), size, param="items")
    if refusal is not None:
        raise refusal


def _checked_items(raw_items: list[Any]) -> list[NewItem]:
    """Checked before the conversation is read or locked: a bad item is the client's 400 whatever the
    conversation's state (a 409 while a turn holds it would only say to retry the same refusal)."""
    return normalize_input(raw_items, param="items", max_items=MAX_ITEMS_PER_CALL)


async def _append_direct(
    conn: AsyncConnection, tenant_id: str, conversation_id: str, checked: list[NewItem]
) -> list[NewItem]:
    items = await resolve_item_references(conn, tenant_id, checked, param="items")
    await refuse_ids_held(conn, tenant_id, conversation_id, items, param="items")
    start = await repository.advance_conversation(
        conn, conversation_id, added=len(items), title=repository.title_from(items)
    )
    assert start is not None
    await repository.insert_items(
        conn,
        repository.item_rows(items, tenant_id=tenant_id, conversation_id=conversation_id, first_position=start),
    )
    return items


async def create_conversation(
    engine: AsyncEngine, tenant_id: str, body: dict[str, Any], *, caps: ConversationCaps | None = None
) -> dict[str, Any]:
    metadata = validate_metadata(body.get("metadata"))
    raw_items = _items_param(body.get("items"), "items")
    checked = _checked_items(raw_items)
    conversation_id = new_id("conv")
    if caps is not None and checked:
        # As for an append: a conversation created beyond its caps would refuse every turn and append after it.
        _refuse_beyond_caps(caps, conversation_id, 0, 0, raw_items)
    async with engine.begin() as conn:
        row = await repository.insert_conversation(
            conn, conversation_id=conversation_id, tenant_id=tenant_id, metadata=metadata
        )
        if checked:
            await _append_direct(conn, tenant_id, row.id, checked)
    return conversation_view(row)


async def get_conversation(engine: AsyncEngine, tenant_id: str, conversation_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = await repository.get_conversation(conn, tenant_id, conversation_id)
    if row is None:
        raise conversation_not_found(conversation_id)
    return conversation_view(row)


async def update_conversation(
    engine: AsyncEngine, tenant_id: str, conversation_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    if "metadata" not in body:
        raise InvalidRequest("metadata is required", param="metadata", code="missing_required_parameter")
    metadata = validate_metadata(body["metadata"])
    async with engine.begin() as conn:
        row = await repository.update_metadata(conn, tenant_id, conversation_id, metadata)
    if row is None:
        raise conversation_not_found(conversation_id)
    return conversation_view(row)


async def delete_conversation(engine: AsyncEngine, tenant_id: str, conversation_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        await lock_free_conversation(conn, tenant_id, conversation_id)
        await idempotency_keys.forget_deleted_conversation(conn, tenant_id, conversation_id)
        await repository.delete_conversation(conn, tenant_id, conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


async def add_items(
    engine: AsyncEngine,
    tenant_id: str,
    conversation_id: str,
    body: dict[str, Any],
    *,
    caps: ConversationCaps | None = None,
) -> dict[str, Any]:
    raw_items = _items_param(body.get("items"), "items")
    if not raw_items:
        raise InvalidRequest("items must hold at least one item", param="items")
    checked = _checked_items(raw_items)
    if any(item.type == ITEM_REFERENCE for item in checked):
        # A reference to no item of the tenant's is a 404 whatever the conversation's state, too (after the
        # conversation's own); the items named are copied as they are now (the copy does not follow them).
        async with engine.connect() as conn:
            if await repository.get_conversation(conn, tenant_id, conversation_id) is None:
                raise conversation_not_found(conversation_id)
            checked = await resolve_item_references(conn, tenant_id, checked, param="items")
    async with engine.begin() as conn:
        row = await lock_free_conversation(conn, tenant_id, conversation_id)
        if caps is not None:
            held_bytes = await repository.stored_bytes(conn, conversation_id) if caps.max_bytes else 0
            _refuse_beyond_caps(caps, conversation_id, row.item_count, held_bytes, raw_items)
        items = await _append_direct(conn, tenant_id, conversation_id, checked)
    return item_list([item_view(i.id, i.status, i.body) for i in items], has_more=False)


async def items_page(conn: AsyncConnection, conversation_id: str, page: PageRequest) -> dict[str, Any]:
    """One page of a conversation's items (the caller checked the conversation is visible)."""

    async def position_of(item_id: str) -> int | None:
        anchor = await repository.find_item(conn, conversation_id, item_id)
        if anchor is not None:
            return int(anchor.position)
        # A client deleting the items as it pages through them names the last item of the page it deleted.
        return await repository.deleted_position(conn, conversation_id, item_id)

    return await item_page(
        page,
        anchor=position_of,
        fetch=lambda after: repository.list_items(conn, conversation_id, page, after),
        unknown_after=f"No item with id '{page.after}' in conversation '{conversation_id}'",
    )


async def list_items(engine: AsyncEngine, tenant_id: str, conversation_id: str, page: PageRequest) -> dict[str, Any]:
    async with engine.connect() as conn:
        if await repository.get_conversation(conn, tenant_id, conversation_id) is None:
            raise conversation_not_found(conversation_id)
        return await items_page(conn, conversation_id, page)


async def get_item(engine: AsyncEngine, tenant_id: str, conversation_id: str, item_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        if await repository.get_conversation(conn, tenant_id, conversation_id) is None:
            raise conversation_not_found(conversation_id)
        row = await repository.find_item(conn, conversation_id, item_id)
    if row is None:
        raise NotFound(f"Item with id '{item_id}' not found in conversation '{conversation_id}'.")
    return item_view(row.id, row.status, row.body)


async def delete_item(engine: AsyncEngine, tenant_id: str, conversation_id: str, item_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        conversation = await lock_free_conversation(conn, tenant_id, conversation_id)
        row = await repository.find_item(conn, conversation_id, item_id)
        if row is None:
            raise NotFound(f"Item with id '{item_id}' not found in conversation '{conversation_id}'.")
        await repository.remove_item(conn, conversation_id, row)
        await idempotency_keys.forget_deleted_item(conn, tenant_id, conversation_id, item_id)
    return conversation_view(conversation)
