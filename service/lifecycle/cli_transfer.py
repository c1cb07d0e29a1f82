"""`convstore export` and `convstore import`: backups between databases, streamed in constant memory (one
conversation's items at a time). An import is one transaction: the whole file, or nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncEngine

from service.context.sealing import Sealer
from service.errors import InvalidRequest
from service.keys.service import get_or_create_tenant
from service.lifecycle import backup, ends, jsonl
from service.limits.sizes import ConversationCaps


async def export_to(out: BinaryIO, engine: AsyncEngine, *, tenant: str | None, conversation: str | None) -> None:
    async for chunk in await backup.open_export(engine, tenant=tenant, conversation_id=conversation):
        out.write(chunk)
    out.flush()


def _lines(source: BinaryIO) -> Iterator[bytes]:
    for line in source:
        yield line.rstrip(b"\r\n")


@dataclass(frozen=True)
class Imported:
    conversations: int
    items: int
    unopened_compaction_items: int  # sealed with a key this service does not hold (lifecycle/resealing.py)


async def import_from(
    source: BinaryIO, engine: AsyncEngine, *, tenant: str | None, caps: ConversationCaps, sealer: Sealer
) -> Imported:
    """Each conversation goes to `tenant`, else to the tenant its header names (created if new), within `caps`."""
    conversations = items = unopened = 0
    tenant_ids: dict[str, str] = {}
    resealer = await sealer.resealer()  # before the transaction: the key may be read on a connection of its own
    async with engine.begin() as conn:
        for pending in backup.conversations_in(ends.whole(jsonl.entries(_lines(source), many=True)), caps):
            name = tenant or pending.header.tenant
            if name is None:
                raise InvalidRequest(
                    f"Line {pending.header.line}: the header names no tenant; pass --tenant", code="invalid_jsonl"
                )
            if name not in tenant_ids:
                # A tenant a header names is restored as it was named, whatever a new tenant's name may hold now.
                tenant_ids[name] = await get_or_create_tenant(conn, name, restored=tenant is None)
            _, not_opened = await backup.insert_conversation(conn, tenant_ids[name], pending, resealer)
            conversations += 1
            items += len(pending.items)
            unopened += not_opened
    return Imported(conversations, items, unopened)


def stdout() -> BinaryIO:
    return sys.stdout.buffer
