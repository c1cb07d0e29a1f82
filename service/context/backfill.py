"""`convstore count-tokens`: token counts for the items stored before counts were kept.

Such items have none (`item.token_count` is null): every turn that reads one estimates it again, and a worker
that never served its thread tokenizes it on its first turn there. This estimates each once and stores it, in
batches of short transactions (a batch's items are read by primary key, after the last one done), so it can run
beside the service and be stopped and run again. Counts already stored are never changed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context.tokens import body_tokens

_WITHOUT_COUNTS = text("SELECT pk, body FROM item WHERE token_count IS NULL AND pk > :after ORDER BY pk LIMIT :batch")
_SET_COUNTS = text(
    """
    UPDATE item SET token_count = c.token_count
    FROM unnest(:pks, :counts) AS c(pk, token_count)
    WHERE item.pk = c.pk AND item.token_count IS NULL
    """
).bindparams(bindparam("pks", type_=ARRAY(BigInteger)), bindparam("counts", type_=ARRAY(Integer)))


async def count_missing(engine: AsyncEngine, *, batch: int = 1000) -> int:
    """Store an estimated count for every item without one; returns how many were counted."""
    counted, after = 0, 0
    while True:
        async with engine.begin() as conn:
            rows = (await conn.execute(_WITHOUT_COUNTS, {"after": after, "batch": batch})).all()
            if not rows:
                return counted
            counts = [body_tokens(row.body) for row in rows]
            await conn.execute(_SET_COUNTS, {"pks": [row.pk for row in rows], "counts": counts})
        counted += len(rows)
        after = rows[-1].pk
