"""Console sessions their operator signed out of. The cookie is signed and carries its own expiry, so clearing it
in the browser leaves any copy of it (a shared machine, a proxy's log) valid until then: its nonce is kept until
that expiry, and every page refuses it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.console.session import Session
from service.db.models import console_session_end_table

ended_t = console_session_end_table


async def sign_out(engine: AsyncEngine, session: Session) -> None:
    """Also forgets the sessions whose cookies have expired by now: they open nothing any more."""
    until = datetime.fromtimestamp(session.expires_at, UTC)
    async with engine.begin() as conn:
        await conn.execute(delete(ended_t).where(ended_t.c.expires_at < func.now()))
        await conn.execute(insert(ended_t).values(nonce=session.nonce, expires_at=until).on_conflict_do_nothing())


async def is_signed_out(engine: AsyncEngine, session: Session) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.scalar(select(exists().where(ended_t.c.nonce == session.nonce))))
