"""Engine construction.

A database restart between requests must be invisible to clients. PostgreSQL closes its connections when it
restarts or terminates a backend, and asyncpg notices the close on the socket without being asked, so a
checkout that finds its connection already closed swaps it for a new one. That costs nothing per checkout,
where SQLAlchemy's pool_pre_ping costs a round trip every time (two checkouts a turn: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from service.db.checkout_gate import CheckoutGate
from service.observability import pool as pool_metrics


def _replace_closed_connection(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        # The pool discards this connection and checks out (or opens) another one.
        raise DisconnectionError("pooled connection was closed by the server")


def _through_transaction_pooler(connect_args: dict[str, Any]) -> dict[str, Any]:
    """What a pooler in transaction mode (pgbouncer 1.18) needs: consecutive transactions of one connection of
    ours may run on different server sessions. So no statement stays prepared between transactions (asyncpg's
    own cache off; SQLAlchemy's prepared statements named uniquely, so two of our connections never collide on
    one server session), and no startup parameter the pooler refuses: the settings above are then the
    database's (docs/scaling.md gives the ALTER DATABASE)."""
    return {
        **connect_args,
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4().hex}__",
        "server_settings": {"application_name": connect_args["server_settings"]["application_name"]},
    }


def create_engine(
    database_url: str, *, pool_size: int = 20, pool_timeout: float = 30.0, transaction_pooler: bool = False
) -> AsyncEngine:
    """`transaction_pooler`: DATABASE_URL points at a pooler in transaction mode (DATABASE_TRANSACTION_POOLER)."""
    connect_args: dict[str, Any] = {
        "timeout": 5,
        "server_settings": {
            "application_name": "convstore",
            # A backstop: no session of ours may sit idle in a transaction (we never wait on upstream in one).
            "idle_in_transaction_session_timeout": "60000",
            # Plan each prepared statement once. Left to choose, PostgreSQL kept re-planning the turn's begin
            # statement on every run (time the statement need not spend, docs/benchmarks.md) on connections
            # whose first turns were on short conversations: their cheap custom plans made the generic plan look
            # dearer. Our statements are key lookups and index walks whose best plan does not depend on the
            # values; the admin listing, where it does, asks for per-value plans in its own transactions.
            "plan_cache_mode": "force_generic_plan",
            # No JIT compilation: PostgreSQL compiles a plan whose estimated cost passes jit_above_cost,
            # which took many times longer than an admin page's whole run (a sequential scan of every thread,
            # docs/benchmarks.md). No statement of ours runs long enough to win that back.
            "jit": "off",
        },
    }
    if transaction_pooler:
        connect_args = _through_transaction_pooler(connect_args)
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        # No overflow: an overflow connection is closed whenever it is returned while the pool is full, so
        # under steady load connections were opened and closed many times a second (each a new PostgreSQL
        # backend); a request that finds every connection busy waits up to pool_timeout instead.
        max_overflow=0,
        pool_recycle=1800,
        pool_timeout=pool_timeout,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine.pool, "checkout", _replace_closed_connection)
    return engine


# The turn loop's checkouts queue here (service/db/checkout_gate.py), in a queue as wide as the pool, rather than
# inside the pool: a checkout that waits inside SQLAlchemy's pool waits in a greenlet, which keeps a copy of its C
# stack on the heap while it waits: with a burst of streams starting at once, a share of every stream's memory
# (the capacity scenario in docs/benchmarks.md). Other queries (reads, listings, key
# lookups) take connections without passing here, so while they hold some, a turn past the gate can still wait
# in the pool, for up to DB_POOL_TIMEOUT more.
_checkout_gates: weakref.WeakKeyDictionary[Engine, CheckoutGate] = weakref.WeakKeyDictionary()


async def _enter_gate(engine: AsyncEngine, *, finishing: bool) -> CheckoutGate:
    pool = engine.sync_engine.pool
    gate = _checkout_gates.get(engine.sync_engine)
    if gate is None:
        gate = _checkout_gates[engine.sync_engine] = CheckoutGate(pool.size())  # type: ignore[attr-defined]
    if gate.try_acquire():
        return gate
    timeout: float = pool.timeout()  # type: ignore[attr-defined]
    pool_metrics.waiting_for_connection()
    try:
        async with asyncio.timeout(timeout):
            await gate.wait(finishing=finishing)
    except TimeoutError:
        # What the pool itself raises when no connection frees up in time (a 503 database_unavailable).
        raise PoolTimeout(f"no database connection was free within {timeout:g}s (DB_POOL_TIMEOUT)") from None
    finally:
        pool_metrics.done_waiting()
    return gate


@asynccontextmanager
async def driver_connection(engine: AsyncEngine, *, finishing: bool = False) -> AsyncIterator[Any]:
    """A pooled connection's asyncpg connection, in autocommit: for the turn loop's few statements, each one
    a whole transaction (data-modifying CTEs), sent as prepared statements without SQLAlchemy's per-statement
    work, its BEGIN and its COMMIT (docs/benchmarks.md measures the difference). The pool still owns the
    connection: checkout (with the closed-connection check above) and return work as for every other query;
    taking it without an AsyncConnection around it costs less than half as much. Start an explicit transaction
    with `.transaction()` where more than one statement must be atomic. A turn's finishing statements pass
    `finishing`: they go before waiting begins."""
    gate = await _enter_gate(engine, finishing=finishing)
    try:
        pooled = await engine.raw_connection()
        try:
            yield pooled.driver_connection
        finally:
            # Returning it to the pool may have to talk to the server (a rollback); that needs SQLAlchemy's
            # greenlet.
            await greenlet_spawn(pooled.close)
    finally:
        gate.release()
