"""SQL for webhook endpoints and the delivery outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Integer, bindparam, delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import tenant_table, webhook_attempt_table, webhook_delivery_table, webhook_endpoint_table
from service.db.ownership import owned_by

MAX_RETRY_DELAY = 3600.0
endpoint_t = webhook_endpoint_table
delivery_t = webhook_delivery_table
attempt_t = webhook_attempt_table

# Due deliveries, claimed for `lease` seconds with SKIP LOCKED: any number of processes share the outbox and
# none sends a row another is sending; a claim left by a dead process expires.
_CLAIM_DUE = text(
    """
    UPDATE webhook_delivery d SET locked_until = now() + make_interval(secs => :lease)
    FROM webhook_endpoint e
    WHERE d.pk IN (
        SELECT pk FROM webhook_delivery
        WHERE state = 'pending' AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AND e.id = d.endpoint_id
    RETURNING d.pk, d.event_id, d.event_type, d.response_id, d.created_at, d.attempts, d.locked_until,
              d.endpoint_id, d.tenant_id, e.url, e.secret
    """
).bindparams(bindparam("lease", type_=Integer))

# What record_attempt answers besides the delivery's new state.
GONE = "gone"  # the delivery was deleted while it was sent (with its response or its endpoint)
CLAIM_LOST = "claim_lost"  # its claim ran out while it was sent, and another attempt took it over

# After an attempt: delivered on a 2xx; else the next attempt after base * 2^(attempts - 1) seconds (at most an
# hour apart), or failed for good once that would fall past the retry window. Only while the row is still this
# attempt's claim (`locked_until` as the claim set it): an attempt that outlived its claim, which another process
# then took, must not undo that process's outcome (a delivered event marked failed, or pending and sent again);
# its attempt is still logged. The attempt is logged as of when it started.
_RECORD = text(
    """
    WITH attempt AS (
        INSERT INTO webhook_attempt (delivery_pk, attempted_at, status_code, error, duration_ms)
        SELECT :pk, now() - make_interval(secs => :duration_ms / 1000.0), :status_code, :error, :duration_ms
        WHERE EXISTS (SELECT FROM webhook_delivery WHERE pk = :pk)
    ), recorded AS (
        UPDATE webhook_delivery SET
            attempts = attempts + 1,
            locked_until = NULL,
            state = CASE WHEN :ok THEN 'delivered'
                         WHEN now() + make_interval(secs => least(:base * power(2, attempts), :cap))
                              > created_at + make_interval(secs => :window) THEN 'failed'
                         ELSE 'pending' END,
            delivered_at = CASE WHEN :ok THEN now() END,
            next_attempt_at = CASE WHEN :ok THEN NULL
                                   WHEN now() + make_interval(secs => least(:base * power(2, attempts), :cap))
                                        > created_at + make_interval(secs => :window) THEN NULL
                                   ELSE now() + make_interval(secs => least(:base * power(2, attempts), :cap)) END
        WHERE pk = :pk AND state = 'pending' AND locked_until = :claim
        RETURNING state
    )
    SELECT (SELECT state FROM recorded) AS state, EXISTS (SELECT FROM webhook_delivery WHERE pk = :pk) AS present
    """
).bindparams(
    bindparam("status_code", type_=Integer),
    bindparam("duration_ms", type_=Integer),
    bindparam("claim", type_=DateTime(timezone=True)),
)


async def tenant_by_name(conn: AsyncConnection, name: str) -> Any:
    stmt = select(tenant_table.c.id, tenant_table.c.name).where(tenant_table.c.name == name)
    return (await conn.execute(stmt)).first()


async def insert_endpoint(conn: AsyncConnection, values: dict[str, Any]) -> Any:
    return (await conn.execute(insert(endpoint_t).values(**values).returning(endpoint_t))).one()


async def list_endpoints(conn: AsyncConnection, tenant_id: str) -> Sequence[Any]:
    stmt = select(endpoint_t).where(endpoint_t.c.tenant_id == tenant_id).order_by(endpoint_t.c.created_at)
    return (await conn.execute(stmt)).all()


async def delete_endpoint(conn: AsyncConnection, tenant_id: str, endpoint_id: str) -> bool:
    stmt = (
        delete(endpoint_t)
        .where(endpoint_t.c.id == endpoint_id, owned_by(endpoint_t.c.tenant_id, tenant_id))
        .returning(endpoint_t.c.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def claim_due(conn: AsyncConnection, *, limit: int, lease: int) -> Sequence[Any]:
    return (await conn.execute(_CLAIM_DUE, {"limit": limit, "lease": lease})).all()


async def record_attempt(
    conn: AsyncConnection,
    *,
    pk: int,
    claim: datetime,
    ok: bool,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    retry_base: float,
    retry_window: float,
) -> str:
    """The delivery's state after the attempt: delivered, pending (to be tried again) or failed; GONE, or
    CLAIM_LOST when only the attempt was logged. `claim`: the row's `locked_until` as the claim set it."""
    params = {
        "pk": pk,
        "claim": claim,
        "ok": ok,
        "status_code": status_code,
        "error": error,
        "duration_ms": duration_ms,
        "base": retry_base,
        "window": retry_window,
        "cap": MAX_RETRY_DELAY,
    }
    row = (await conn.execute(_RECORD, params)).one()
    if row.state is not None:
        return str(row.state)
    return CLAIM_LOST if row.present else GONE


async def list_deliveries(
    conn: AsyncConnection, *, tenant_id: str | None, state: str | None, before_pk: int | None, limit: int
) -> Sequence[Any]:
    stmt = (
        select(delivery_t, tenant_table.c.name.label("tenant"))
        .join(tenant_table, tenant_table.c.id == delivery_t.c.tenant_id)
        .order_by(delivery_t.c.pk.desc())
        .limit(limit)
    )
    if tenant_id is not None:
        stmt = stmt.where(delivery_t.c.tenant_id == tenant_id)
    if state is not None:
        stmt = stmt.where(delivery_t.c.state == state)
    if before_pk is not None:
        stmt = stmt.where(delivery_t.c.pk < before_pk)
    return (await conn.execute(stmt)).all()


async def attempts_of(conn: AsyncConnection, delivery_pks: list[int]) -> Sequence[Any]:
    if not delivery_pks:
        return []
    stmt = select(attempt_t).where(attempt_t.c.delivery_pk.in_(delivery_pks)).order_by(attempt_t.c.pk)
    return (await conn.execute(stmt)).all()
