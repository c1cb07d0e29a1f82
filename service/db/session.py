"""Engine construction. Pre-ping replaces connections that died with a database restart, so a restart between
requests is invisible to clients."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(database_url: str, *, pool_size: int = 10, pool_timeout: float = 30.0) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
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
