"""The turn's hot statements keep the plan shape docs/architecture.md describes: each read starts from one row
found by its key and goes through an index from there, never a scan of a table that grows. Every statement of
service/responses/turn_store.py is planned as a generic plan (the service's connections use generic plans) in a
scratch copy of the schema holding many conversations and chains whose items are stored out of order, where
reading a whole table looks least costly. (On empty tables the planner scans them, which costs nothing; the
first ANALYZE of a table that grew invalidates those plans.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.responses import turn_store
from service.responses.statement import Statement

STATEMENTS = {name: value for name, value in vars(turn_store).items() if isinstance(value, Statement)}
TABLES = ("tenant", "conversation", "response", "item", "response_chain", "response_event_log")
GROWING = ("conversation", "response", "item", "response_chain", "response_event_log")
# The statements that read a conversation's history: a range of (conversation_id, position) (walked in order, or
# read as a bitmap and sorted when the items lie out of order), only the conversation's items.
HISTORY_READS = ("_CLAIM_AND_STORE", "_CLAIM_ONLY", "_HISTORY")

_SEED = """
    INSERT INTO tenant (id, name) VALUES ('ten_plan', 'plan-check');
    INSERT INTO conversation (id, tenant_id)
        SELECT 'conv_' || n, 'ten_plan' FROM generate_series(1, 2000) n;
    INSERT INTO response (id, tenant_id, status, model, thread_id, previous_response_id)
        SELECT 'resp_' || n, 'ten_plan', 'completed', 'm', 'resp_' || (n - (n - 1) % 5),
               CASE WHEN n % 5 <> 1 THEN 'resp_' || (n - 1) END
        FROM generate_series(1, 50000) n;
    INSERT INTO response_chain (id, tenant_id)
        SELECT 'resp_' || n, 'ten_plan' FROM generate_series(1, 50000, 5) n;
    INSERT INTO item (id, tenant_id, conversation_id, position, response_id, is_output, ordinal, thread_id, type,
                      status, body)
        SELECT 'msg_' || n, 'ten_plan', CASE WHEN n <= 200000 THEN 'conv_' || (n % 2000) END,
               CASE WHEN n <= 200000 THEN n / 2000 END, 'resp_' || (n % 50000 + 1), n % 2 = 1, 0,
               'conv_' || (n % 2000), 'message', 'completed', '{}'
        FROM generate_series(1, 300000) n ORDER BY random();
"""


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("DROP SCHEMA IF EXISTS plan_check CASCADE; CREATE SCHEMA plan_check")
        for table in TABLES:
            await conn.execute(f"CREATE TABLE plan_check.{table} (LIKE public.{table} INCLUDING ALL)")
        await conn.execute("SET search_path = plan_check; SET plan_cache_mode = force_generic_plan")
        yield conn
    finally:
        await conn.execute("RESET search_path; DROP SCHEMA IF EXISTS plan_check CASCADE")
        await conn.close()


async def _plans(conn: asyncpg.Connection) -> dict[str, str]:
    plans = {}
    for name, statement in STATEMENTS.items():
        await conn.execute(f"PREPARE plan_check_statement AS {statement.sql}")
        nulls = ", ".join(["NULL"] * len(statement.names))
        rows = await conn.fetch(f"EXPLAIN EXECUTE plan_check_statement({nulls})")
        await conn.execute("DEALLOCATE plan_check_statement")
        plans[name] = "\n".join(row[0] for row in rows)
    return plans


def _check(plans: dict[str, str]) -> None:
    assert len(plans) >= 15, sorted(plans)
    for name, plan in plans.items():
        for table in GROWING:
            assert f"Seq Scan on {table} " not in plan, f"{name} scans {table}:\n{plan}"
    for name in HISTORY_READS:
        plan = plans[name]
        assert re.search(r'Index Cond: \(\(conversation_id = \$\d+\) AND \("position" >= \$\d+\)\)', plan), (
            f"{name}:\n{plan}"
        )


async def test_no_turn_statement_scans_a_growing_table(
    scratch: asyncpg.Connection,
) -> None:
    await scratch.execute(_SEED)
    await scratch.execute(f"ANALYZE {', '.join(TABLES)}")
    _check(await _plans(scratch))
