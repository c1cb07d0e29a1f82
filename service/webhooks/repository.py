"""SQL for webhook endpoints and the delivery outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, Integer, Text, bindparam, delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import tenant_table, webhook_attempt_table, webhook_delivery_table, webhook_endpoint_table
from service.db.ownership import owned_by

MAX_RETRY_DELAY = 3600.0
endpoint_t = webhook_endpoint_table
delivery_t = webhook_delivery_table
attempt_t = webhook_attempt_table

# Due deliveries, claimed for `lease` seconds with SKIP LOCKED: any number of processes share the outbox and
# none sends a row another is sending; a claim left by a dead process expires. Oldest first, read from the partial
# index of pending rows in its order (the plan at every size); the rows of `busy_endpoints` and `busy_tenants`,
# whose share this process is sending already, are passed over, a cost that grows with how many of theirs are due
# ahead of the others.
_CLAIM_DUE = text(
    """
    UPDATE webhook_delivery d SET locked_until = now() + make_interval(secs => :lease)
    FROM webhook_endpoint e, tenant t
    WHERE d.pk IN (
        SELECT pk FROM webhook_delivery
        WHERE state = 'pending' AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())
          AND endpoint_id <> ALL(:busy_endpoints) AND tenant_id <> ALL(:busy_tenants)
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AND e.id = d.endpoint_id AND t.id = d.tenant_id
    RETURNING d.pk, d.event_id, d.event_type, d.response_id, d.created_at, d.attempts, d.locked_until,
              d.endpoint_id, d.tenant_id, t.name AS tenant, e.url, e.secret
    """
).bindparams(
    bindparam("lease", type_=Float),
    bindparam("busy_endpoints", type_=ARRAY(Text)),
    bindparam("busy_tenants", type_=ARRAY(Text)),
)

# Claims given back unused (each still this process's): the next claim, here or elsewhere, may take them at once.
_GIVE_BACK = text(
    """
    UPDATE webhook_delivery d SET locked_until = NULL
    FROM unnest(:pks, :claims) AS c(pk, claim)
    WHERE d.pk = c.pk AND d.locked_until = c.claim AND d.state = 'pending'
    """
).bindparams(bindparam("pks", type_=ARRAY(BigInteger)), bindparam("claims", type_=ARRAY(DateTime(timezone=True))))

# The claims of the sends stopped at shutdown, given back (each still this process's), so that the next process
# sends them at once; each stopped send is logged as an attempt (the receiver may have had it), as of its start.
_RELEASE = text(
    """
    WITH released AS (
        UPDATE webhook_delivery d SET locked_until = NULL, attempts = d.attempts + 1
        FROM unnest(:pks, :claims) AS c(pk, claim)
        WHERE d.pk = c.pk AND d.locked_until = c.claim AND d.state = 'pending'
        RETURNING d.pk
    )
    INSERT INTO webhook_attempt (delivery_pk, attempted_at, status_code, error, duration_ms)
    SELECT c.pk, now() - make_interval(secs => c.ms / 1000.0), NULL, :error, c.ms
    FROM unnest(:pks, :durations) AS c(pk, ms) JOIN released USING (pk)
    """
).bindparams(
    bindparam("pks", type_=ARRAY(BigInteger)),
    bindparam("claims", type_=ARRAY(DateTime(timezone=True))),
    bindparam("durations", type_=ARRAY(Integer)),
)
STOPPED_AT_SHUTDOWN = "stopped: the process shut down"

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


async def claim_due(
    conn: AsyncConnection, *, limit: int, busy_endpoints: Sequence[str], busy_tenants: Sequence[str], lease: float
) -> Sequence[Any]:
    params = {
        "limit": limit,
        "busy_endpoints": list(busy_endpoints),
        "busy_tenants": list(busy_tenants),
        "lease": lease,
    }
    return (await conn.execute(_CLAIM_DUE, params)).all()


async def give_back(conn: AsyncConnection, claims: Sequence[tuple[int, datetime]]) -> None:
    """Gives back these (pk, locked_until) claims, unused, of deliveries still pending."""
    await conn.execute(_GIVE_BACK, {"pks": [pk for pk, _ in claims], "claims": [claim for _, claim in claims]})


async def release_claims(conn: AsyncConnection, stopped: Sequence[tuple[int, datetime, int]]) -> None:
    """Gives back the claims of sends stopped at shutdown, each (pk, its locked_until, how long it ran in ms), of
    deliveries still pending and still claimed by them."""
    params = {
        "pks": [pk for pk, _, _ in stopped],
        "claims": [claim for _, claim, _ in stopped],
        "durations": [ms for _, _, ms in stopped],
        "error": STOPPED_AT_SHUTDOWN,
    }
    await conn.execute(_RELEASE, params)


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
        select(
            delivery_t,
            tenant_table.c.name.label("tenant"),
            (delivery_t.c.locked_until > func.now()).label("claimed"),
        )
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
    stmt = (
        select(attempt_t)
        .where(attempt_t.c.delivery_pk.in_(delivery_pks))
        .order_by(attempt_t.c.attempted_at, attempt_t.c.pk)
    )
    return (await conn.execute(stmt)).all()
