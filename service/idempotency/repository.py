"""SQL for idempotency keys. A key row is scoped by (tenant_id, key); `locked_at` doubles as the token of the
request that holds it, so a request whose claim was taken over cannot overwrite the new holder's answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import conversation_table, idempotency_key_table, response_table
from service.errors import error_envelope

key_t = idempotency_key_table

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


def _seconds(name: str, value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, bindparam(name, value))


async def claim(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    key: str,
    fingerprint: bytes,
    method: str,
    path: str,
    keep_seconds: float,
    stale_after_seconds: float,
    holder_process: str,
) -> datetime | None:
    """Insert the key as in_progress and return its lock token; None when another request owns the key.

    An existing row is taken over (reset) only when it has expired but was not purged yet, or when it is still
    in_progress with the same fingerprint past the deadline its holder set (`held_until`: its own TURN_LOCK_TTL,
    `stale_after_seconds` here), by when the holder must have finished unless it died. A key claimed before
    held_until existed is judged by this process's TTL. The key names its `holder_process`: when the reaper takes
    that process for dead it deletes the key (service/cluster/repository.py), so a retry need not wait that long."""
    values = insert(key_t).values(
        tenant_id=tenant_id,
        key=key,
        fingerprint=fingerprint,
        method=method,
        path=path,
        state=IN_PROGRESS,
        locked_at=func.clock_timestamp(),
        held_until=func.clock_timestamp() + _seconds("stale", stale_after_seconds),
        holder_process=holder_process,
        expires_at=func.now() + _seconds("keep", keep_seconds),
    )
    excluded = values.excluded
    takeover = or_(
        key_t.c.expires_at < func.now(),
        and_(
            key_t.c.state == IN_PROGRESS,
            key_t.c.fingerprint == excluded.fingerprint,
            func.coalesce(key_t.c.held_until, key_t.c.locked_at + _seconds("stale", stale_after_seconds)) < func.now(),
        ),
    )
    stmt = values.on_conflict_do_update(
        index_elements=[key_t.c.tenant_id, key_t.c.key],
        set_={
            "fingerprint": excluded.fingerprint,
            "method": excluded.method,
            "path": excluded.path,
            "state": IN_PROGRESS,
            "locked_at": excluded.locked_at,
            "held_until": excluded.held_until,
            "holder_process": excluded.holder_process,
            "expires_at": excluded.expires_at,
            "status_code": None,
            "headers": None,
            "body": None,
            "response_id": None,
            "conversation_id": None,
            "created_at": func.now(),
        },
        where=takeover,
    ).returning(key_t.c.locked_at)
    token: datetime | None = await conn.scalar(stmt)
    return token


async def get(conn: AsyncConnection, tenant_id: str, key: str) -> Any:
    stmt = select(key_t).where(key_t.c.tenant_id == tenant_id, key_t.c.key == key)
    return (await conn.execute(stmt)).first()


async def store_answer(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    key: str,
    token: datetime,
    status_code: int,
    headers: list[list[str]],
    body: bytes,
    response_id: str | None,
    conversation_id: str | None,
    answer_response_id: str | None = None,
) -> bool:
    """Complete the key with the answer to replay. The links are kept only to rows that exist (a store=false
    response has none), so that deleting them cascades to this row. `answer_response_id`: the response the answer
    is read from at replay (its event stream, or its outcome once stored), which may not be stored yet."""
    existing_response = select(response_table.c.id).where(response_table.c.id == response_id).scalar_subquery()
    existing_conversation = (
        select(conversation_table.c.id).where(conversation_table.c.id == conversation_id).scalar_subquery()
    )
    stmt = (
        update(key_t)
        .where(key_t.c.tenant_id == tenant_id, key_t.c.key == key, key_t.c.locked_at == token)
        .values(
            state=COMPLETED,
            status_code=status_code,
            headers=headers,
            body=body,
            response_id=existing_response if response_id else None,
            conversation_id=existing_conversation if conversation_id else None,
            answer_response_id=answer_response_id,
        )
        .returning(key_t.c.key)
    )
    return (await conn.execute(stmt)).first() is not None


async def settle_deferred_answer(
    conn: AsyncConnection, *, tenant_id: str, key: str, response_id: str, status_code: int, body: bytes
) -> None:
    """Replace an answer given while the turn's outcome waited for the database by the stored response."""
    await conn.execute(
        update(key_t)
        .where(key_t.c.tenant_id == tenant_id, key_t.c.key == key, key_t.c.answer_response_id == response_id)
        .values(
            status_code=status_code,
            headers=[["content-type", "application/json"]],
            body=body,
            response_id=select(response_table.c.id).where(response_table.c.id == response_id).scalar_subquery(),
            answer_response_id=None,
        )
    )


async def release(conn: AsyncConnection, *, tenant_id: str, key: str, token: datetime) -> None:
    """Forget a key whose request had no effect, so that a retry with it runs afresh."""
    await conn.execute(
        delete(key_t).where(
            key_t.c.tenant_id == tenant_id,
            key_t.c.key == key,
            key_t.c.locked_at == token,
            key_t.c.state == IN_PROGRESS,
        )
    )


async def release_held_by(conn: AsyncConnection, process_ids: list[str]) -> int:
    """Forget the unanswered keys of processes taken for dead, so that a retry with one runs at once rather than
    after the key's held_until. Run only in the pass that finds those processes dead (a scan of the keys)."""
    if not process_ids:
        return 0
    stmt = delete(key_t).where(key_t.c.state == IN_PROGRESS, key_t.c.holder_process.in_(process_ids))
    return (await conn.execute(stmt)).rowcount


async def purge_expired(conn: AsyncConnection, limit: int) -> int:
    """Delete up to `limit` expired keys (bounded, so one pass never holds a long transaction)."""
    victims = (
        select(key_t.c.tenant_id, key_t.c.key)
        .where(key_t.c.expires_at < func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("victims")
    )
    stmt = (
        delete(key_t)
        .where(key_t.c.tenant_id == victims.c.tenant_id, key_t.c.key == victims.c.key)
        .returning(key_t.c.key)
    )
    return len((await conn.execute(stmt)).all())


async def forget_deleted_response(conn: AsyncConnection, tenant_id: str, response_id: str) -> None:
    """A deleted response is not replayed: its key keeps answering, but with the 404 a read of it gives now
    (the key stays used, so a retry does not run the turn, and charge for it, a second time)."""
    envelope = error_envelope(
        f"Response with id '{response_id}' not found.", "invalid_request_error", None, "not_found"
    )
    await conn.execute(
        update(key_t)
        .where(
            key_t.c.tenant_id == tenant_id,
            or_(key_t.c.response_id == response_id, key_t.c.answer_response_id == response_id),
            key_t.c.state == COMPLETED,
        )
        .values(
            status_code=404,
            headers=[["content-type", "application/json"]],
            body=msgspec.json.encode(envelope),
            answer_response_id=None,
        )
    )
