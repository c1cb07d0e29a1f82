"""The reads the context-window service needs that a turn does not already make."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Aggregating an ordered subquery keeps its order (as the turn path's history read does).
_CONVERSATION_HISTORY = text(
    "SELECT string_agg(body, ',') FROM (SELECT body FROM item WHERE conversation_id = :c ORDER BY position) h"
)


async def conversation_history(conn: AsyncConnection, conversation_id: str) -> str:
    """A conversation's items as stored JSON texts joined by commas, the way a turn reads them."""
    history: str | None = await conn.scalar(_CONVERSATION_HISTORY, {"c": conversation_id})
    return history or ""
