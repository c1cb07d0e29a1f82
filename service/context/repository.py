"""The reads the context-window service needs that a turn does not already make."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Aggregating an ordered subquery keeps its order (as the turn path's history read does).
_CONVERSATION_HISTORY = text(
    "SELECT string_agg(body, ',') AS history, array_agg(token_count) AS counts "
    "FROM (SELECT body, token_count FROM item WHERE conversation_id = :c ORDER BY position) h"
)


async def conversation_history(conn: AsyncConnection, conversation_id: str) -> tuple[str, list[int]]:
    """A conversation's items as stored JSON texts joined by commas, the way a turn reads them, and each item's
    stored token count (-1 where it has none)."""
    row = (await conn.execute(_CONVERSATION_HISTORY, {"c": conversation_id})).one()
    return row.history or "", [-1 if count is None else count for count in row.counts or ()]
