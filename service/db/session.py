"""Engine construction.

A database restart between requests must be invisible to clients. PostgreSQL closes its connections when it
restarts or terminates a backend, and asyncpg notices the close on the socket without being asked, so a
checkout that finds its connection already closed swaps it for a new one. That costs nothing per checkout,
where SQLAlchemy's pool_pre_ping costs a round trip every time (~0.8 ms per checkout measured, two checkouts a
turn: docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection


def _replace_closed_connection(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        # The pool discards this connection and checks out (or opens) another one.
        raise DisconnectionError("pooled connection was closed by the server")


def create_engine(database_url: str, *, pool_size: int = 10, pool_timeout: float = 30.0) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=pool_timeout,
        connect_args={
            "timeout": 5,
            "server_settings": {
                "application_name": "convstore",
                # A backstop: no session of ours may sit idle in a transaction (we never wait on upstream in one).
                "idle_in_transaction_session_timeout": "60000",
            },
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _replace_closed_connection)
    return engine
