"""The hot statements keep the plan shape docs/architecture.md describes: each read starts from one row found by
its key and goes through an index from there, never a scan of a table that grows nor an index that holds every
row of a tenant. Every statement of service/responses/turn_store.py, the heartbeat's sweep of chains' pending
turns and the API's reads and writes of one row named by its key are planned as generic plans (the service's
connections use generic plans, and keep each until a table it reads is analyzed again) in a scratch copy of the
schema, in the three states a connection may first plan on: new and empty (the plan a server with autovacuum off
keeps while the tables grow), grown with no statistics, and grown and analyzed, with many conversations and
chains whose items are stored out of order, where reading a whole table looks least costly."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.conversations import repository as conversations_repository
from service.lifecycle import repository as lifecycle_repository
from service.responses import event_repository, turn_store
from service.responses import repository as responses_repository
from service.responses.statement import Statement
from service.threads import repository as threads_repository

_SWEEP = {
    name: str(getattr(threads_repository, name).compile(dialect=postgresql.asyncpg.dialect()))
    for name in ("_PENDING_CHAINS", "_FOLD_PENDING")
}
STATEMENTS = {
    **{name: value.sql for name, value in vars(turn_store).items() if isinstance(value, Statement)},
    **_SWEEP,
}
TABLES = ("tenant", "conversation", "response", "item", "response_chain", "response_event_log", "running_chain_turn")
GROWING = ("conversation", "response", "item", "response_chain", "response_event_log")
# The statements that read a conversation's history: a range of (conversation_id, position) (walked in order, or
# read as a bitmap and sorted when the items lie out of order), only the conversation's items.
HISTORY_READS = ("_CLAIM_AND_STORE", "_CLAIM_ONLY", "_HISTORY")
# The statements that find a chain's pending turns (service/threads/totals.py): through the partial index of
# pending turns only, never by thread_id (every response of the chain) nor by primary key over a scanned table.
PENDING_READS = ("_FINISH_STORED", "_FINISH_LOGGED", "_FINISH_UNSEEN", "_FOLD_PENDING_TURNS", *_SWEEP)
_INDEX_READ = r"(?:Index (?:Only )?Scan using|Bitmap Index Scan on) "
# The finishes, which look up their output ids among the tenant's items by (tenant_id, id).
FINISHES = tuple(name for name in STATEMENTS if name.startswith("_FINISH_"))

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
    INSERT INTO response_event_log (response_id, events, event_count)
        SELECT 'resp_' || n, '', 0 FROM generate_series(1, 50000, 10) n;
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


def _executing(statement: Any) -> Callable[[AsyncConnection], Awaitable[object]]:
    return lambda conn: conn.execute(statement, {"id": "conv_1"})


async def _lookups_by_key(database_url: str) -> dict[str, str]:
    """The SQL of the API's reads and writes of one row named by its key (a response, a conversation), as the
    service sends it: captured from the repository functions, run on no rows and rolled back."""
    calls: dict[str, Callable[[AsyncConnection], Awaitable[object]]] = {
        "get_response": lambda conn: responses_repository.get_response(conn, "ten_plan", "resp_1"),
        "stream_state": lambda conn: event_repository.stream_state(conn, "ten_plan", "resp_1"),
        "get_conversation": lambda conn: conversations_repository.get_conversation(conn, "ten_plan", "conv_1"),
        "lock_conversation": lambda conn: conversations_repository.lock_conversation(conn, "ten_plan", "conv_1"),
        "update_metadata": lambda conn: conversations_repository.update_metadata(conn, "ten_plan", "conv_1", {}),
        "delete_conversation": lambda conn: conversations_repository.delete_conversation(conn, "ten_plan", "conv_1"),
        "conversation_exists": lambda conn: lifecycle_repository.conversation_exists(conn, "conv_1", "ten_plan"),
        # What a deleted conversation keeps, after each delete of one of its responses.
        **{
            f"settle_deleted_conversation_{name}": _executing(statement)
            for name, statement in (
                ("lock", conversations_repository._LOCK_DELETED),
                ("trim", conversations_repository._TRIM_DELETED),
                ("delete", conversations_repository._DELETE_UNNEEDED),
            )
        },
    }
    engine = create_async_engine(database_url)
    statements: dict[str, str] = {}
    try:
        async with engine.connect() as conn:
            for name, call in calls.items():
                sent: list[str] = []

                def record(*args: object, sent: list[str] = sent) -> None:
                    sent.append(str(args[2]))

                event.listen(engine.sync_engine, "before_cursor_execute", record)
                await call(conn)
                event.remove(engine.sync_engine, "before_cursor_execute", record)
                for number, sql in enumerate(sent):
                    statements[f"{name}[{number}]"] = sql
            await conn.rollback()
    finally:
        await engine.dispose()
    # delete_conversation sends three: whether a response names the conversation, then (none does) the detach of
    # items carried by responses and the delete.
    assert len(statements) == len(calls) + 2, sorted(statements)
    return statements


async def _plans(conn: asyncpg.Connection, extra: dict[str, str] | None = None) -> dict[str, str]:
    plans = {}
    for name, sql in {**STATEMENTS, **(extra or {})}.items():
        await conn.execute(f"PREPARE plan_check_statement AS {sql}")
        parameters = len(set(re.findall(r"\$\d+", sql)))
        nulls = ", ".join(["NULL"] * parameters)
        rows = await conn.fetch(f"EXPLAIN EXECUTE plan_check_statement({nulls})")
        await conn.execute("DEALLOCATE plan_check_statement")
        plans[name] = "\n".join(row[0] for row in rows)
    return plans


def _check(plans: dict[str, str]) -> None:
    assert len(plans) >= 17, sorted(plans)
    for name, plan in plans.items():
        for table in GROWING:
            assert f"Seq Scan on {table} " not in plan, f"{name} scans {table}:\n{plan}"
        # A row named by its key is never read through an index that leads with tenant_id (every row of the
        # tenant), the choice a plan made on tables without statistics could take. The one read by tenant and id
        # (a finish's output ids the tenant holds, turn_store._held) must use both columns.
        for read in re.finditer(rf"{_INDEX_READ}(\S*tenant_id\S*).*\n\s*Index Cond: (.*)", plan):
            index, condition = read.groups()
            assert index == "item_tenant_id_id_idx", f"{name} reads a tenant's rows:\n{plan}"
            assert re.fullmatch(r"\(\(tenant_id = \$\d+\) AND \(id = u\.id\)\)", condition), f"{name}:\n{plan}"
    for name in HISTORY_READS:
        plan = plans[name]
        assert re.search(r'Index Cond: \(\(conversation_id = \$\d+\) AND \("position" >= \$\d+\)\)', plan), (
            f"{name}:\n{plan}"
        )
    assert len(FINISHES) == 6, FINISHES
    for name in FINISHES:
        assert re.search(rf"{_INDEX_READ}item_tenant_id_id_idx\b", plans[name]), f"{name}:\n{plans[name]}"
    for name in PENDING_READS:
        plan = plans[name]
        # The scratch copy's indexes are named by PostgreSQL: response_pending_chain_id_idx for the partial one.
        assert re.search(rf"{_INDEX_READ}response_pending_chain_id_idx\b", plan), f"{name}:\n{plan}"
        assert not re.search(rf"{_INDEX_READ}response_thread_id\S*", plan), f"{name}:\n{plan}"


@pytest.mark.parametrize("state", ["new", "grown without statistics", "grown and analyzed"])
async def test_no_turn_statement_scans_a_growing_table(
    scratch: asyncpg.Connection, database_url: str, state: str
) -> None:
    lookups = await _lookups_by_key(database_url)
    if state != "new":
        await scratch.execute(_SEED)
    if state == "grown and analyzed":
        await scratch.execute(f"ANALYZE {', '.join(TABLES)}")
    _check(await _plans(scratch, lookups))
