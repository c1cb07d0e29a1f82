"""Schema changes go through alembic only; this runs them from the CLI and the test suite, and tells the CLI
whether a database is at this release's revision."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str, *, configure_logging: bool = False) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = configure_logging
    return config


@dataclass(frozen=True)
class Migrated:
    before: str | None  # the revision it was at, None for an empty schema


def upgrade(database_url: str, revision: str = "head") -> Migrated | None:
    """None when there was nothing to do, another process having done it meanwhile included."""
    config = alembic_config(database_url)
    command.upgrade(config, revision)
    if "migrated_from" not in config.attributes:
        return None
    return Migrated(config.attributes["migrated_from"])


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


@functools.cache
def head_revision() -> str:
    """The revision this release's code is written for (read once: each reading parses every migration file)."""
    head = _scripts().get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def is_known_revision(revision: str) -> bool:
    """False for a revision from a newer release (or none at all): this code's migrations do not hold it."""
    try:
        return _scripts().get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown or malformed id
        return False


async def database_revision(engine: AsyncEngine) -> str | None:
    """The revision stamped in the database's alembic_version, None when it was never migrated."""
    async with engine.connect() as conn:
        heads = await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
    return ",".join(heads) if heads else None
