"""Async alembic environment. The URL is handed in by service.migrate (config attribute "database_url") or,
for the plain alembic CLI, read from DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from logging.config import fileConfig

from alembic import context
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.config import normalize_database_url
from service.db.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Processes started together (a release's replicas, each with AUTO_MIGRATE on) all migrate: the first holds this
# advisory lock while it does, and the others, waiting for it, then find the schema at its head. A session lock,
# held until the connection closes at the end of the run: a migration may commit part way (an index built
# concurrently), which would release a transaction's lock. The others try for it between pauses rather than
# wait in pg_advisory_lock: an index built concurrently waits for every transaction older than it, a waiting
# pg_advisory_lock included, which waits for the builder: a deadlock. "convstor" in ASCII: above the range of
# the processes' liveness locks (service/cluster/heartbeat.py draws those from 62 bits). A database already at
# this release's head takes no lock: a process starting then must not wait behind another's long migration.
MIGRATION_LOCK = 0x636F6E7673746F72
MIGRATION_LOCK_PAUSE_SECONDS = 0.2
MIGRATION_LOCK_REPORT_SECONDS = 10.0


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("Set DATABASE_URL (or run `python -m service migrate`, which starts the embedded server)")
    return normalize_database_url(str(url))


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _at_head(connection: Connection) -> bool:
    current = set(MigrationContext.configure(connection).get_current_heads())
    connection.commit()
    return current == set(ScriptDirectory.from_config(config).get_heads())


def _take_migration_lock(connection: Connection) -> None:
    reported = time.monotonic()
    while not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}).scalar():
        if time.monotonic() - reported >= MIGRATION_LOCK_REPORT_SECONDS:
            reported = time.monotonic()
            holder = connection.execute(
                text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::bigint = :high AND objid::bigint = :low LIMIT 1"
                ),
                {"high": MIGRATION_LOCK >> 32, "low": MIGRATION_LOCK & 0xFFFFFFFF},
            ).scalar()
            print(f"waiting for another migration of this database (PostgreSQL backend {holder})", file=sys.stderr)
        connection.commit()
        time.sleep(MIGRATION_LOCK_PAUSE_SECONDS)
    connection.commit()


def _run(connection: Connection) -> None:
    if not _at_head(connection):
        _take_migration_lock(connection)
        # Read under the lock: a process that waited for another's migration finds nothing left to do, and says so
        # (service/migrate.py, upgrade).
        before = MigrationContext.configure(connection).get_current_heads()
        connection.commit()
        if set(before) != set(ScriptDirectory.from_config(config).get_heads()):
            config.attributes["migrated_from"] = ",".join(before) or None
    context.configure(connection=connection, target_metadata=target_metadata, compare_server_default=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
