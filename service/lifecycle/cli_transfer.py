"""`convstore export` and `convstore import`: backups between databases, streamed in constant memory (one
conversation's items at a time). An import is one transaction: the whole file, or nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import BinaryIO

from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import InvalidRequest
from service.keys.service import get_or_create_tenant
from service.lifecycle import backup, jsonl
from service.limits.sizes import ConversationCaps


async def export_to(out: BinaryIO, engine: AsyncEngine, *, tenant: str | None, conversation: str | None) -> None:
    async for chunk in await backup.open_export(engine, tenant=tenant, conversation_id=conversation):
        out.write(chunk)
    out.flush()


def _lines(source: BinaryIO) -> Iterator[bytes]:
    for line in source:
        yield line.rstrip(b"\r\n")


async def import_from(
    source: BinaryIO, engine: AsyncEngine, *, tenant: str | None, caps: ConversationCaps
) -> tuple[int, int]:
    """Each conversation goes to `tenant`, else to the tenant its header names (created if new), within `caps`."""
    conversations = items = 0
    tenant_ids: dict[str, str] = {}
    async with engine.begin() as conn:
        for pending in backup.conversations_in(jsonl.parse_lines(_lines(source), many=True), caps):
            name = tenant or pending.header.tenant
            if name is None:
                raise InvalidRequest(
                    f"Line {pending.header.line}: the header names no tenant; pass --tenant", code="invalid_jsonl"
                )
            if name not in tenant_ids:
                tenant_ids[name] = await get_or_create_tenant(conn, name)
            await backup.insert_conversation(conn, tenant_ids[name], pending)
            conversations += 1
            items += len(pending.items)
    return conversations, items


def stdout() -> BinaryIO:
    return sys.stdout.buffer
