"""Reading the event logs of streamed responses (one row per response, written once at the end by
the statement that stores its outcome, in turn_store)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import response_event_log_table, response_table
from service.db.ownership import owned_by

log_t = response_event_log_table
response_t = response_table


async def stream_state(conn: AsyncConnection, tenant_id: str, response_id: str) -> Any:
    """The response's status and stream flag with its event log (`events` as text, or `events_zlib` packed; both
    None when none was written), or None when the tenant has no such response."""
    stmt = (
        select(response_t.c.status, response_t.c.stream, log_t.c.events, log_t.c.events_zlib)
        .select_from(response_t.outerjoin(log_t, log_t.c.response_id == response_t.c.id))
        .where(
            response_t.c.id == response_id,
            owned_by(response_t.c.tenant_id, tenant_id),
            response_t.c.deleted_at.is_(None),
        )
    )
    return (await conn.execute(stmt)).first()
