"""Export, import and fork of a conversation. Each write is one transaction: an import or fork either creates
the whole new conversation or nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.conversations import repository as conversations
from service.conversations.service import conversation_not_found, conversation_view
from service.errors import InvalidRequest, NotFound, StreamBrokenOff, refuse_unknown_fields
from service.ids import new_id
from service.items import NewItem, item_view
from service.lifecycle import ends, jsonl, repository
from service.lifecycle.caps import ImportTally, refuse_fork_beyond
from service.lifecycle.copies import imported_item
from service.limits.sizes import ConversationCaps
from service.metadata import validate_metadata

# Items read per statement while exporting: memory stays flat however long the conversation is, and no
# connection is held while the client reads.
EXPORT_PAGE = 1000


class ExportInterrupted(StreamBrokenOff):
    """The conversation was deleted (or its purge began) while its export was streaming: the stream is broken
    off, so that the client sees a failed export rather than a complete-looking part of one."""


@dataclass
class Written:
    """What an export of many has written whole so far (its end line counts them)."""

    conversations: int = 0


async def conversation_lines(
    engine: AsyncEngine, row: Any, tenant: str | None = None, *, written: Written | None = None
) -> AsyncIterator[bytes]:
    """The conversation's JSON Lines: its header, then its items page by page, each page its own short read
    that also checks, in the same snapshot, that the conversation is still there, then its end line. `written`
    (an export of many, which counts its conversations): a conversation gone before anything of it was sent is
    left out, and one gone after is withdrawn by a line of its own, which an import reads as "leave it out"
    (jsonl.Withdrawn), rather than breaking off the whole export for one tenant's delete."""
    after = -1
    items = 0
    started = False
    while True:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                there = await repository.conversation_exists(conn, row.id, None)
                page = await repository.item_page(conn, row.id, after, EXPORT_PAGE) if there else []
        if not there:
            if written is not None:
                if started:
                    yield jsonl.withdrawn_line(row)
                return
            raise ExportInterrupted(f"conversation {row.id} was deleted during its export")
        if not started:
            started = True
            yield jsonl.header_line(row, tenant)
        if page:
            items += len(page)
            yield b"".join(jsonl.encode(item_view(r.id, r.status, r.body, for_client=False)) + b"\n" for r in page)
        if len(page) < EXPORT_PAGE:
            if written is not None:
                written.conversations += 1
            yield jsonl.end_line(row, items)
            return
        after = page[-1].position


async def open_export(engine: AsyncEngine, tenant_id: str, conversation_id: str) -> AsyncIterator[bytes]:
    """Checks the conversation exists (a 404 must come before the stream starts), then streams it."""
    async with engine.connect() as conn:
        row = await conversations.get_conversation(conn, tenant_id, conversation_id)
    if row is None:
        raise conversation_not_found(conversation_id)
    return conversation_lines(engine, row)


def check_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in jsonl.ACCEPTED_MEDIA_TYPES:
        raise InvalidRequest(
            f"Send the conversation as JSON Lines with Content-Type: {jsonl.MEDIA_TYPE} (got {media_type or 'none'!r})",
            code="unsupported_media_type",
            status_code=415,
        )


# Refuses a forged or foreign compaction item among raw items (ContextWindows.check_items), raising InvalidRequest.
ItemCheck = Callable[[str, list[Any]], Awaitable[None]]


async def _check_compaction(check: ItemCheck, tenant_id: str, line: jsonl.ItemLine) -> None:
    """A compaction item's sealed summary must open for this tenant, as when it is added to a conversation."""
    if line.value.get("type") != "compaction":
        return
    try:
        await check(tenant_id, [line.value])
    except InvalidRequest as exc:
        # Named by its line as any bad line is, with the code of the rule it broke (invalid_encrypted_content).
        raise InvalidRequest(f"Line {line.line}: {exc.message}", param=f"line {line.line}", code=exc.code) from None


@dataclass(frozen=True)
class ImportedLine:
    line: jsonl.ItemLine
    item: NewItem


async def import_conversation(
    engine: AsyncEngine, tenant_id: str, raw: bytes, *, caps: ConversationCaps, check: ItemCheck | None = None
) -> dict[str, Any]:
    """One exported conversation as a new one: new ids, everything else as in the file."""
    tally = ImportTally(caps)

    def converted(
        entries: Iterable[jsonl.Header | jsonl.ItemLine | jsonl.Withdrawn],
    ) -> Iterator[jsonl.Header | ImportedLine]:
        for entry in entries:
            if isinstance(entry, jsonl.Header):
                yield entry
            elif isinstance(entry, jsonl.ItemLine):  # a one-conversation file withdraws nothing (jsonl.parse)
                item = imported_item(entry.value)
                tally.add(entry.line, item)
                yield ImportedLine(entry, item)

    header: jsonl.Header | None = None
    items: list[NewItem] = []
    async for entry in jsonl.in_worker_thread(converted(ends.whole(jsonl.parse(raw, many=False)))):
        if isinstance(entry, jsonl.Header):
            header = entry
            continue
        if check is not None:
            await _check_compaction(check, tenant_id, entry.line)
        items.append(entry.item)
    assert header is not None  # parse() makes line 1 the header
    async with engine.begin() as conn:
        row = await repository.insert_conversation_with_items(
            conn,
            conversation_id=new_id("conv"),
            tenant_id=tenant_id,
            metadata=header.metadata,
            created_at=header.created_at,
            items=items,
        )
    return conversation_view(row)


async def fork_conversation(
    engine: AsyncEngine, tenant_id: str, conversation_id: str, body: dict[str, Any], *, caps: ConversationCaps
) -> dict[str, Any]:
    """A new conversation holding copies of the source's items up to and including `item_id`. A turn running
    on the source does not block the fork, which sees its items once committed; a delete of the source or of
    one of its items waits for the fork (else the fork could copy what the delete left: nothing)."""
    refuse_unknown_fields(body, ("item_id", "metadata"))
    item_id = body.get("item_id")
    if item_id is None:
        raise InvalidRequest(
            "item_id is required: the id of the last item the fork keeps",
            param="item_id",
            code="missing_required_parameter",
        )
    if not isinstance(item_id, str) or not item_id:
        raise InvalidRequest("item_id must be an item's id (a string)", param="item_id", code="invalid_type")
    metadata = validate_metadata(body["metadata"]) if body.get("metadata") is not None else None
    async with engine.begin() as conn:
        source = await conversations.get_conversation(conn, tenant_id, conversation_id, hold=True)
        if source is None:
            raise conversation_not_found(conversation_id)
        through = await repository.item_position(conn, conversation_id, item_id)
        if through is None:
            raise NotFound(f"Item with id '{item_id}' not found in conversation '{conversation_id}'.", param="item_id")
        if caps.max_items or caps.max_bytes:
            items, size = await repository.items_through(conn, conversation_id, through)
            refuse_fork_beyond(caps, conversation_id, item_id, items, size)
        row = await repository.copy_items_into(
            conn,
            source=conversation_id,
            through=through,
            target=new_id("conv"),
            tenant_id=tenant_id,
            metadata=source.metadata if metadata is None else metadata,
        )
    return conversation_view(row)
