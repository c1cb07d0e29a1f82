"""The threads migration fills thread_id for rows stored before it (conversations, chains with branches, chains
that continue a conversation, a response whose conversation its tenant deleted) and response_chain's totals, and
goes back down cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service.migrate import alembic_config, downgrade, upgrade

BEFORE_THREADS = "8e2f6b0d4c51"
THREADS = "4d1b6f8a2e34"

# tenant t; conversation conv_a with a direct item and two turns; r_c2 continues it outside the conversation;
# chain r_1 <- r_2 <- r_3 with a branch r_1 <- r_4; r_orphan once ran in a conversation its tenant deleted.
_ROWS = """
INSERT INTO tenant (id, name) VALUES ('ten_t', 't');
INSERT INTO conversation (id, tenant_id) VALUES ('conv_a', 'ten_t');
INSERT INTO response (id, tenant_id, conversation_id, previous_response_id, status, model, upstream_model,
                      input_tokens, output_tokens, cost, metadata, created_at, completed_at) VALUES
 ('r_a1', 'ten_t', 'conv_a', NULL, 'completed', 'm', NULL, 1, 1, 0, '{}', now() - interval '9 min', NULL),
 ('r_a2', 'ten_t', 'conv_a', NULL, 'completed', 'm', NULL, 1, 1, 0, '{}', now() - interval '8 min', NULL),
 ('r_c2', 'ten_t', NULL, 'r_a2', 'completed', 'm', NULL, 1, 1, 0, '{}', now() - interval '7 min', NULL),
 ('r_1', 'ten_t', NULL, NULL, 'completed', 'asked', 'served', 10, 5, 0.5, '{"k": "v"}',
  now() - interval '6 min', now() - interval '6 min'),
 ('r_2', 'ten_t', NULL, 'r_1', 'completed', 'asked', 'served', 10, 5, 0.5, '{}',
  now() - interval '5 min', now() - interval '5 min'),
 ('r_3', 'ten_t', NULL, 'r_2', 'completed', 'asked', 'served', 10, 5, 0.5, '{}',
  now() - interval '4 min', now() - interval '4 min'),
 ('r_4', 'ten_t', NULL, 'r_1', 'failed', 'newest', NULL, 10, 0, 0.25, '{}',
  now() - interval '3 min', now() - interval '2 min'),
 ('r_orphan', 'ten_t', NULL, NULL, 'completed', 'm', NULL, 1, 1, 0, '{}', now() - interval '1 min', NULL);
INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, type, role, status,
                  body, text_content) VALUES
 ('i_direct', 'ten_t', NULL, false, 0, 'conv_a', 0, 'message', 'user', 'completed', '{}', 'direct'),
 ('i_a1', 'ten_t', 'r_a1', false, 0, 'conv_a', 1, 'message', 'user', 'completed', '{}', 'a1'),
 ('i_a2', 'ten_t', 'r_a2', true, 0, 'conv_a', 2, 'message', 'assistant', 'completed', '{}', 'a2'),
 ('i_c2', 'ten_t', 'r_c2', false, 0, NULL, NULL, 'message', 'user', 'completed', '{}', 'c2'),
 ('i_1', 'ten_t', 'r_1', false, 0, NULL, NULL, 'message', 'user', 'completed', '{}', '  first   words '),
 ('i_1o', 'ten_t', 'r_1', true, 0, NULL, NULL, 'message', 'assistant', 'completed', '{}', 'answer'),
 ('i_3', 'ten_t', 'r_3', false, 0, NULL, NULL, 'message', 'user', 'completed', '{}', 'three'),
 ('i_4', 'ten_t', 'r_4', false, 0, NULL, NULL, 'message', 'user', 'completed', '{}', 'four'),
 ('i_orphan', 'ten_t', 'r_orphan', false, 0, NULL, NULL, 'message', 'user', 'completed', '{}', 'orphan');
"""

EXPECTED_THREADS = {
    "r_a1": "conv_a",
    "r_a2": "conv_a",
    "r_c2": "conv_a",
    "r_1": "r_1",
    "r_2": "r_1",
    "r_3": "r_1",
    "r_4": "r_1",
    "r_orphan": "r_orphan",
}


@pytest.fixture
async def scratch_url(database_url: str) -> AsyncIterator[str]:
    """An empty database next to the test database (named after it, so parallel suites do not share it)."""
    name = f"{make_url(database_url).database}_threads_migration"
    server = create_async_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    async with server.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await server.dispose()


async def _query(url: str, sql: str) -> list[dict[str, object]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            return [dict(row._mapping) for row in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


async def _run(url: str, script: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            for statement in script.split(";\n"):
                if statement.strip():
                    await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def test_migration_fills_threads_and_chain_totals_and_downgrades(scratch_url: str) -> None:
    await asyncio.to_thread(upgrade, scratch_url, BEFORE_THREADS)
    await _run(scratch_url, _ROWS)
    await asyncio.to_thread(upgrade, scratch_url, THREADS)

    responses = await _query(scratch_url, "SELECT id, thread_id FROM response")
    assert {r["id"]: r["thread_id"] for r in responses} == EXPECTED_THREADS
    # Tables with rows are analyzed for the fill.
    assert await _row_estimates(scratch_url, "response", "item") == {"response": 8, "item": 9}
    items = await _query(scratch_url, "SELECT id, thread_id FROM item")
    assert {i["id"]: i["thread_id"] for i in items} == {
        "i_direct": "conv_a",
        "i_a1": "conv_a",
        "i_a2": "conv_a",
        "i_c2": "conv_a",
        "i_1": "r_1",
        "i_1o": "r_1",
        "i_3": "r_1",
        "i_4": "r_1",
        "i_orphan": "r_orphan",
    }
    chains = {row["id"]: row for row in await _query(scratch_url, "SELECT * FROM response_chain")}
    assert set(chains) == {"r_1", "r_orphan"}
    chain = chains["r_1"]
    assert chain["tenant_id"] == "ten_t" and chain["metadata"] == {"k": "v"} and chain["title"] == "first words"
    assert (chain["response_count"], chain["item_count"]) == (4, 4)
    assert (chain["input_tokens"], chain["output_tokens"], chain["cost"]) == (40, 15, Decimal("1.75"))
    # The newest response's model (asked for, as none served it) and status; its completion is the last activity.
    assert (chain["last_model"], chain["last_status"]) == ("newest", "failed")
    [times] = await _query(
        scratch_url,
        "SELECT (SELECT completed_at FROM response WHERE id = 'r_4') AS last, "
        "(SELECT created_at FROM response WHERE id = 'r_1') AS first",
    )
    assert (chain["updated_at"], chain["created_at"]) == (times["last"], times["first"])

    await asyncio.to_thread(downgrade, scratch_url, BEFORE_THREADS)
    columns = await _query(
        scratch_url,
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'thread_id' "
        "UNION ALL SELECT table_name FROM information_schema.tables WHERE table_name = 'response_chain'",
    )
    assert columns == []
    assert len(await _query(scratch_url, "SELECT id FROM item")) == len(items)
    await asyncio.to_thread(upgrade, scratch_url, "head")
    await asyncio.to_thread(command.check, alembic_config(scratch_url))


async def _row_estimates(url: str, *tables: str) -> dict[str, float]:
    rows = await _query(
        url, f"SELECT relname, reltuples FROM pg_class WHERE relname IN ({', '.join(repr(t) for t in tables)})"
    )
    return {str(row["relname"]): float(str(row["reltuples"])) for row in rows}


async def test_a_new_database_looks_up_responses_by_key_from_its_first_turn(scratch_url: str) -> None:
    """Migrating an empty database must not record its tables as analyzed and empty: a statement planned
    against that scans the table, and every item insert's foreign-key check of its response is such a
    statement, planned once per connection and kept until the table is analyzed again (never, where
    autovacuum is off). Never analyzed, the table is assumed to hold a few pages and the lookup uses its key."""
    await asyncio.to_thread(upgrade, scratch_url, "head")
    assert await _row_estimates(scratch_url, "response", "item") == {"response": -1, "item": -1}
    engine = create_async_engine(scratch_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET plan_cache_mode = force_generic_plan"))
            # The statement PostgreSQL's foreign-key check of item.response_id runs.
            await conn.execute(
                text("PREPARE fk_check(text) AS SELECT 1 FROM ONLY response x WHERE id = $1 FOR KEY SHARE OF x")
            )
            plan = "\n".join(row[0] for row in await conn.execute(text("EXPLAIN EXECUTE fk_check('resp_x')")))
    finally:
        await engine.dispose()
    assert "Index Scan using pk_response" in plan and "Seq Scan" not in plan, plan
