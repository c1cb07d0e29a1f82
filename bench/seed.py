"""Seeding benchmark data straight in SQL (INSERT … SELECT generate_series), matching service/db/models.py.

Seeded conversations hold alternating user and assistant messages of about 400 bytes of JSON each, stored as the
service stores them (exact JSON text in `item.body`, plain text in `text_content`, the service's token estimate in
`token_count`, positions 0..n-1), as if added through POST /v1/conversations/{id}/items. Ids are deterministic
(`conv_bench_<set>_<n>`) so a set can be found again, and a database that already holds a set is reused instead of
seeded twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.context.tokens import ITEM_FRAMING_TOKENS, text_tokens
from service.keys import service as keys

BENCH_TENANT = "bench"
_FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "

# One statement per batch of conversations: the conversation rows, then their items.
_INSERT_CONVERSATIONS = text(
    """
    INSERT INTO conversation (id, tenant_id, metadata, title, next_position, item_count)
    SELECT CAST(:prefix AS text) || g, :tenant_id, '{"bench": "seed"}'::jsonb, 'bench conversation ' || g,
           CAST(:size AS integer), CAST(:size AS integer)
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
    """
)
_INSERT_ITEMS = text(
    """
    INSERT INTO item (id, tenant_id, conversation_id, thread_id, position, type, role, status, body, text_content,
                      token_count)
    SELECT
        'msg_b' || CAST(:set_name AS text) || '_' || g || '_' || p,
        :tenant_id,
        CAST(:prefix AS text) || g,
        CAST(:prefix AS text) || g,
        p,
        'message',
        CASE WHEN p % 2 = 0 THEN 'user' ELSE 'assistant' END,
        'completed',
        CASE WHEN p % 2 = 0
            THEN '{"type":"message","role":"user","content":[{"type":"input_text","text":"' || t.txt || '"}]}'
            ELSE '{"type":"message","role":"assistant","id":"msg_b' || :set_name || '_' || g || '_' || p
                 || '","status":"completed","content":[{"type":"output_text","text":"' || t.txt
                 || '","annotations":[]}]}'
        END,
        t.txt,
        -- cl100k cuts a number into tokens of up to 3 digits; the rest of the text is the same in every item.
        CAST(:item_tokens AS integer) + ceil(length(p::text) / 3.0)::int + ceil(length(g::text) / 3.0)::int
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
    CROSS JOIN generate_series(0, CAST(:size AS integer) - 1) AS p
    CROSS JOIN LATERAL (SELECT 'Turn ' || p || ' of conversation ' || g || ': ' || CAST(:filler AS text) AS txt) AS t
    ORDER BY g, p
    """
)


@dataclass(frozen=True)
class ConversationSet:
    name: str
    size: int
    count: int

    @property
    def prefix(self) -> str:
        return f"conv_bench_{self.name}_"

    def ids(self) -> list[str]:
        return [f"{self.prefix}{n}" for n in range(1, self.count + 1)]


def engine_for(url: str) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool)


async def create_database_if_missing(url: str) -> None:
    """CREATE DATABASE through the server's maintenance database `postgres`."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parsed = make_url(url)
    name = parsed.database
    server = create_async_engine(parsed.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with server.connect() as conn:
            if not await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await server.dispose()


async def wipe(engine: AsyncEngine) -> None:
    """Empty every table of the service (they all hang off `tenant`)."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE tenant CASCADE"))


async def bench_key(engine: AsyncEngine) -> tuple[str, str]:
    """A fresh API key for the bench tenant: (tenant id, secret)."""
    created = await keys.create_key(engine, tenant=BENCH_TENANT, name="bench")
    async with engine.connect() as conn:
        tenant_id = await conn.scalar(text("SELECT id FROM tenant WHERE name = :n"), {"n": BENCH_TENANT})
    return str(tenant_id), created.secret


async def seeded_count(engine: AsyncEngine, conversations: ConversationSet) -> int:
    async with engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT count(*) FROM conversation WHERE id LIKE :p AND item_count >= :size"),
            {"p": conversations.prefix + "%", "size": conversations.size},
        )
    return int(value or 0)


async def seed(
    engine: AsyncEngine, tenant_id: str, conversations: ConversationSet, *, batch_rows: int = 200_000
) -> float:
    """Insert the set; returns the seconds it took (0 when it was already there)."""
    if await seeded_count(engine, conversations) >= conversations.count:
        return 0.0
    started = time.perf_counter()
    per_batch = max(1, batch_rows // conversations.size)
    for first in range(1, conversations.count + 1, per_batch):
        last = min(conversations.count, first + per_batch - 1)
        params = {
            "item_tokens": _item_tokens_without_numbers(),
            "prefix": conversations.prefix,
            "set_name": conversations.name,
            "tenant_id": tenant_id,
            "size": conversations.size,
            "first": first,
            "last": last,
            "filler": _FILLER,
        }
        async with engine.begin() as conn:
            await conn.execute(_INSERT_CONVERSATIONS, params)
            await conn.execute(_INSERT_ITEMS, params)
    await settle(engine)
    return time.perf_counter() - started


def _item_tokens_without_numbers() -> int:
    """What the service estimates a seeded item costs, less the tokens of its two numbers (one each here)."""
    return ITEM_FRAMING_TOKENS + text_tokens(f"Turn 1 of conversation 1: {_FILLER}") - 2


async def settle(engine: AsyncEngine) -> None:
    """Leave the freshly seeded tables as a long-running database has them: vacuumed (hint bits and visibility
    map set), analyzed, and checkpointed. Otherwise the first measurements pay for the seeding: autovacuum
    starts on the new rows, the first reads of each page write its hint bits, and a checkpoint flushes it all,
    which moved the sequential latency figure between 3 and 5 ms from one run to the next.

    Only tables that hold rows: VACUUM records an empty table as known to be empty (no pages, no rows), and a
    statement planned against that plans a sequential scan, where a table never vacuumed is assumed to have a
    few pages and gets its index. A connection keeps a statement's plan until the table is analyzed again,
    and the foreign-key checks of every item insert are such statements: with autovacuum off (as on the
    benchmark machine's server) they scanned the whole response table for the rest of the run, and turns got
    slower as it grew. A server in service analyzes a table again once it grows, which replans them."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        seeded = [table for table in _SETTLED_TABLES if await conn.scalar(text(f"SELECT EXISTS (SELECT FROM {table})"))]
        if seeded:
            await conn.execute(text(f"VACUUM (ANALYZE) {', '.join(seeded)}"))
        await conn.execute(text("CHECKPOINT"))


_SETTLED_TABLES = ("conversation", "item", "response")


async def prewarm(engine: AsyncEngine) -> bool:
    """Read every table and index into the operating system's page cache (pg_prewarm in `read` mode), as a
    server whose data fits in memory has it. The table-size scenario compares a big table with the small one the
    suite has just seeded (so cached): a big table pushed out of the cache by other databases' writes measured
    1.45-1.69x the small one, warm it measured near 1x. False when the extension is not available (nothing is read)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            await conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        except DBAPIError:
            return False
        await conn.execute(
            text(
                "SELECT pg_prewarm(c.oid, 'read') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
            )
        )
    return True


async def history_bodies(engine: AsyncEngine, conversation_id: str) -> list[str]:
    """A conversation's stored item texts in order: what the service splices into the upstream body."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT body FROM item WHERE conversation_id = :c ORDER BY position"), {"c": conversation_id}
        )
        return [row[0] for row in rows]


async def item_total(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM item")) or 0)


async def has_items(url: str) -> bool:
    """Whether the database exists and its item table holds committed rows."""
    engine = engine_for(url)
    try:
        async with engine.connect() as conn:
            return bool(await conn.scalar(text("SELECT EXISTS (SELECT 1 FROM item)")))
    except Exception:
        return False
    finally:
        await engine.dispose()
