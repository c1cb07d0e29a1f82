"""Admin export and import: many conversations in one JSON Lines stream, each opened by its header, which also
names its tenant (`"tenant": NAME`). The export reads a page of conversations and a page of items at a time,
each in its own short read, so memory stays flat and no connection is held while the client reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.admin.service import listed_tenant_id
from service.context.sealing import Resealer
from service.conversations.service import conversation_not_found, conversation_view
from service.errors import NotFound
from service.ids import new_id
from service.items import NewItem
from service.lifecycle import ends, jsonl, repository, resealing
from service.lifecycle.caps import ImportTally
from service.lifecycle.copies import imported_item
from service.lifecycle.service import Written, conversation_lines
from service.limits.sizes import ConversationCaps

CONVERSATION_PAGE = 100


@dataclass
class PendingConversation:
    header: jsonl.Header
    items: list[NewItem] = field(default_factory=list)


async def _tenant_id(conn: AsyncConnection, name: str) -> str:
    found = await repository.tenant_id_by_name(conn, name)
    if found is None:
        raise NotFound(f"Tenant '{name}' not found.", param="tenant")
    return found


async def _all_lines(engine: AsyncEngine, tenant_id: str | None, conversation_id: str | None) -> AsyncIterator[bytes]:
    after = ""
    written = Written()
    started = False  # a header was written: the file ends with its end line (withdrawn conversations aside)
    while True:
        async with engine.connect() as conn:
            page = await repository.conversation_page(
                conn, tenant_id=tenant_id, conversation_id=conversation_id, after_id=after, limit=CONVERSATION_PAGE
            )
        for row in page:
            async for chunk in conversation_lines(engine, row, tenant=row.tenant, written=written):
                started = True
                yield chunk
        if len(page) < CONVERSATION_PAGE:
            if started:  # an export of nothing stays an empty file; one of withdrawn conversations only ends too
                yield jsonl.export_end_line(written.conversations)
            return
        after = page[-1].id


async def open_export(
    engine: AsyncEngine, *, tenant: str | None = None, conversation_id: str | None = None
) -> AsyncIterator[bytes]:
    """Everything, one tenant's conversations (its name or id, as the admin listings take it: an unknown one is
    their 400 `unknown_tenant`), or one conversation; an error comes before the stream starts."""
    async with engine.connect() as conn:
        tenant_id = await listed_tenant_id(conn, tenant)
        if conversation_id is not None and not await repository.conversation_exists(conn, conversation_id, tenant_id):
            raise conversation_not_found(conversation_id, param="conversation")
    return _all_lines(engine, tenant_id, conversation_id)


def conversations_in(
    entries: Iterable[jsonl.Header | jsonl.ItemLine | jsonl.Withdrawn], caps: ConversationCaps
) -> Iterable[PendingConversation]:
    """Parsed lines grouped into conversations, one at a time (memory: one conversation), each within the caps;
    a conversation withdrawn after its lines (deleted while it was exported) is left out."""
    current: PendingConversation | None = None
    tally = ImportTally(caps)
    for entry in entries:
        if isinstance(entry, jsonl.Header):
            if current is not None:
                yield current
            current = PendingConversation(entry)
            tally = ImportTally(caps)
        elif isinstance(entry, jsonl.Withdrawn):
            current = None
        elif current is not None:
            current.items.append(imported_item(entry.value))
            tally.add(entry.line, current.items[-1])
    if current is not None:
        yield current


async def insert_conversation(
    conn: AsyncConnection, tenant_id: str, pending: PendingConversation, resealer: Resealer
) -> tuple[Any, int]:
    """The conversation, with its compaction items sealed for `tenant_id`; and how many of those could not be
    opened (lifecycle/resealing.py)."""
    unopened = 0
    if any(item.type == "compaction" for item in pending.items):
        sources = await resealing.sealed_for(conn, pending.header, tenant_id)
        unopened = resealing.carry_over(pending.items, sources, tenant_id, resealer)
    row = await repository.insert_conversation_with_items(
        conn,
        conversation_id=new_id("conv"),
        tenant_id=tenant_id,
        metadata=pending.header.metadata,
        created_at=pending.header.created_at,
        items=pending.items,
    )
    return row, unopened


async def import_for_tenant(
    engine: AsyncEngine, tenant: str, raw: bytes, *, caps: ConversationCaps, resealer: Resealer
) -> dict[str, Any]:
    """Every conversation of the file into the tenant, in one transaction: all of them, or none."""
    created = []
    items = unopened = 0
    async with engine.begin() as conn:
        tenant_id = await _tenant_id(conn, tenant)
        parsed = conversations_in(ends.whole(jsonl.parse(raw, many=True)), caps)
        async for pending in jsonl.in_worker_thread(parsed, weight=lambda pending: 1 + len(pending.items)):
            row, not_opened = await insert_conversation(conn, tenant_id, pending, resealer)
            created.append(conversation_view(row))
            items += len(pending.items)
            unopened += not_opened
    return {
        "object": "conversation.import",
        "tenant": tenant,
        "conversations": created,
        "items": items,
        "unopened_compaction_items": unopened,
    }
