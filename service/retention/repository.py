"""SQL for retention. What a policy deletes:

- conversations idle (no change) for N days: their own items go, items carried by responses stay with those
  responses (a conversation its tenant deleted is not idle: it goes with its last response);
- responses created N days ago or earlier, unless still needed as history: by a kept conversation (one of the
  response's items is still in one), by a later response of a conversation its tenant deleted (which replays
  what preceded it there), or by a kept later response (previous_response_id, transitively), or by a plain turn
  still running on it (running_chain_turn). Their items go with them. Running responses are never deleted.

The purge deletes responses as leaves (no later response builds on them), so each batch re-checks under row
locks that nothing came to depend on them, and a chain goes from its end backwards over successive batches. The
preview computes the same set at once: old responses minus the ancestors of every kept one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, Text, bindparam, delete, func, literal_column, select, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.conversations.repository import conversations_to_finish, settle_deleted_conversation
from service.db.models import maintenance_lease_table, retention_policy_table, tenant_table
from service.idempotency.repository import DELETED_RESPONSE_ANSWER, NOT_FOUND_HEADERS
from service.responses.status import answered_sql

# A conversation's thread holds the `previous_response_id` chains continuing its responses, which never touch the
# conversation's row (chain turns would then queue on it): a conversation is idle when its thread is, else its
# purge would cut the history those chains still replay. On the thread's (thread_id, created_at) index. A plain
# chain turn stores its response only at its end: while it runs, its note (running_chain_turn, a table of the
# turns running now) says which response it continues.
_THREAD_IDLE = """NOT EXISTS (
    SELECT 1 FROM response r
    WHERE r.thread_id = conversation.id AND r.created_at >= now() - make_interval(days => :idle_days))
    AND NOT EXISTS (
    SELECT 1 FROM running_chain_turn n JOIN response p ON p.id = n.previous_response_id
    WHERE p.thread_id = conversation.id AND n.expires_at > now())"""

_TENANT_POLICIES = text(
    """
    SELECT t.id, t.name, p.tenant_id IS NOT NULL AS has_policy, p.responses_days, p.conversations_idle_days
    FROM tenant t LEFT JOIN retention_policy p ON p.tenant_id = t.id
    WHERE (p.tenant_id IS NOT NULL AND (p.responses_days IS NOT NULL OR p.conversations_idle_days IS NOT NULL))
       OR (p.tenant_id IS NULL AND :defaults_apply)
    ORDER BY t.name
    """
)

_PREVIEW = text(
    f"""
    WITH RECURSIVE
    doomed_conversation AS (
        SELECT id FROM conversation
        WHERE tenant_id = :tenant AND (purging_since IS NOT NULL OR (
            :idle_days IS NOT NULL AND deleted_at IS NULL AND updated_at < now() - make_interval(days => :idle_days)
            AND NOT (turn_response_id IS NOT NULL AND turn_expires_at > now())
            AND {_THREAD_IDLE}))
    ),
    old AS (
        SELECT id, previous_response_id, status, conversation_id, conversation_position FROM response
        WHERE :days IS NOT NULL AND tenant_id = :tenant AND created_at < now() - make_interval(days => :days)
    ),
    seed AS (
        SELECT o.id FROM old o
        WHERE o.status IN ('queued', 'in_progress')
           OR EXISTS (SELECT 1 FROM item i JOIN conversation c ON c.id = i.conversation_id
                      WHERE i.response_id = o.id AND c.deleted_at IS NULL
                        AND c.id NOT IN (SELECT id FROM doomed_conversation))
        UNION
        SELECT c.previous_response_id FROM old o JOIN response c ON c.previous_response_id = o.id
        WHERE c.created_at >= now() - make_interval(days => :days)
        UNION
        SELECT n.previous_response_id FROM running_chain_turn n JOIN old o ON o.id = n.previous_response_id
        WHERE n.expires_at > now()
    ),
    needed(id) AS (
        SELECT id FROM seed
        UNION
        SELECT o.previous_response_id FROM old o JOIN needed n ON o.id = n.id WHERE o.previous_response_id IS NOT NULL
    ),
    -- In a conversation its tenant deleted, a response whose items are there is needed while a later one is
    -- kept: the purge takes them from the last one backwards, each once nothing follows it.
    in_deleted AS (
        SELECT r.id, r.conversation_id, r.conversation_position, r.status FROM response r
        JOIN conversation c ON c.id = r.conversation_id AND c.deleted_at IS NOT NULL
        WHERE r.tenant_id = :tenant
    ),
    kept_in_deleted AS (
        SELECT conversation_id, max(conversation_position) AS before FROM in_deleted
        WHERE {answered_sql("status")}
          AND (id NOT IN (SELECT id FROM old) OR id IN (SELECT id FROM needed WHERE id IS NOT NULL))
        GROUP BY conversation_id
    ),
    doomed_response AS (
        SELECT o.id FROM old o
        WHERE o.id NOT IN (SELECT id FROM needed WHERE id IS NOT NULL)
          AND NOT EXISTS (SELECT 1 FROM kept_in_deleted k
                          WHERE k.conversation_id = o.conversation_id AND o.conversation_position < k.before
                            AND EXISTS (SELECT 1 FROM item i WHERE i.response_id = o.id
                                                               AND i.conversation_id = o.conversation_id))
    )
    SELECT
        (SELECT count(*) FROM doomed_conversation) AS conversations,
        (SELECT count(*) FROM doomed_response) AS responses,
        (SELECT count(*) FROM item WHERE response_id IN (SELECT id FROM doomed_response))
        + (SELECT count(*) FROM item WHERE conversation_id IN (SELECT id FROM doomed_conversation)
           AND response_id IS NULL)
        + (SELECT count(*) FROM item i
           JOIN conversation d ON d.id = i.conversation_id AND d.tenant_id = :tenant AND d.deleted_at IS NOT NULL
           LEFT JOIN kept_in_deleted k ON k.conversation_id = d.id
           WHERE i.response_id IS NULL AND i.position >= coalesce(k.before, 0)) AS items
    """
).bindparams(bindparam("days", type_=Integer), bindparam("idle_days", type_=Integer))

# Idle conversations no turn holds are marked (purging_since), in one short transaction, before their items are
# removed over several: from the mark on, every API treats them as deleted (service/db/visibility.py) and no turn
# or item change can start on them. The mark is durable: if this process dies, the next run finishes the job.
# A turn claiming one of them meanwhile waits for the row lock, then finds it marked and answers 404.
_MARK_IDLE_CONVERSATIONS = text(
    f"""
    UPDATE conversation SET purging_since = now()
    WHERE id IN (
        SELECT id FROM conversation
        WHERE tenant_id = :tenant AND updated_at < now() - make_interval(days => :idle_days)
          AND purging_since IS NULL AND deleted_at IS NULL AND (turn_response_id IS NULL OR turn_expires_at <= now())
          AND {_THREAD_IDLE}
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
    """
).bindparams(bindparam("idle_days", type_=Integer))

# Conversations an earlier run marked and did not finish (its process died), any tenant's, on the partial index.
_MARKED_CONVERSATIONS = text(
    "SELECT id FROM conversation WHERE purging_since IS NOT NULL ORDER BY purging_since, id LIMIT :limit"
)

_EMPTY_MARKED_CONVERSATIONS = text(
    """
    WITH chunk AS (
        SELECT pk, response_id FROM item
        WHERE conversation_id IN (SELECT id FROM conversation WHERE id = ANY(:ids) AND purging_since IS NOT NULL)
        LIMIT :limit
    ),
    gone AS (DELETE FROM item WHERE pk IN (SELECT pk FROM chunk WHERE response_id IS NULL) RETURNING 1),
    detached AS (
        UPDATE item SET conversation_id = NULL, position = NULL
        WHERE pk IN (SELECT pk FROM chunk WHERE response_id IS NOT NULL)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM detached) AS detached
    """
).bindparams(bindparam("ids", type_=ARRAY(Text)))

# In one transaction, as DELETE /v1/conversations/{id} does: whatever a response carried and is still in the
# conversation is left to the response (the row's delete would cascade to it), then the rows go.
_DETACH_CARRIED_ITEMS = text(
    """
    UPDATE item SET conversation_id = NULL, position = NULL
    WHERE conversation_id = ANY(:ids) AND response_id IS NOT NULL
    """
).bindparams(bindparam("ids", type_=ARRAY(Text)))

_DELETE_MARKED_CONVERSATIONS = text(
    "DELETE FROM conversation WHERE id = ANY(:ids) AND purging_since IS NOT NULL RETURNING id"
).bindparams(bindparam("ids", type_=ARRAY(Text)))

_DELETE_EXPIRED_RESPONSES = text(
    f"""
    WITH doomed AS (
        SELECT r.id FROM response r
        WHERE r.tenant_id = :tenant AND r.created_at < now() - make_interval(days => :days)
          AND r.status NOT IN ('queued', 'in_progress')
          AND NOT EXISTS (SELECT 1 FROM response c WHERE c.previous_response_id = r.id)
          AND NOT EXISTS (SELECT 1 FROM running_chain_turn n WHERE n.previous_response_id = r.id
                                                               AND n.expires_at > now())
          -- needed by a kept conversation, or by a later answered response of one its tenant deleted. Each
          -- candidate's conversation is read by primary key: hashing the tenant's deleted conversations once is
          -- cheaper while they are few, but they need not be, and past what a hash may hold the plan would test
          -- every candidate against all of them (bench/experiments/purge_guard.py)
          AND NOT EXISTS (SELECT 1 FROM item i JOIN conversation c ON c.id = i.conversation_id
                          WHERE i.response_id = r.id AND (c.deleted_at IS NULL OR EXISTS (
                              SELECT 1 FROM response l
                              WHERE l.conversation_id = c.id AND l.conversation_position > r.conversation_position
                                AND {answered_sql("l.status")})))
        ORDER BY r.created_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),
    -- As a tenant's delete leaves them (idempotency/repository.py, forget_deleted_response): a key answers 404
    -- from then on, so that a retry does not run the turn, and charge for it, again. No longer linked, the key
    -- is not deleted with the response.
    keys AS (
        UPDATE idempotency_key k
        SET status_code = 404, headers = :deleted_headers,
            body = convert_to(replace(:deleted_answer, '{{response_id}}', d.id), 'UTF8'), body_zlib = NULL,
            response_id = NULL, answer_response_id = NULL
        FROM doomed d
        WHERE k.tenant_id = :tenant AND k.state = 'completed' AND (k.response_id = d.id OR k.answer_response_id = d.id)
    ),
    items AS (DELETE FROM item WHERE response_id IN (SELECT id FROM doomed) RETURNING 1),
    gone AS (DELETE FROM response WHERE id IN (SELECT id FROM doomed) RETURNING conversation_id)
    SELECT (SELECT count(*) FROM gone) AS responses, (SELECT count(*) FROM items) AS items,
           ARRAY(SELECT DISTINCT conversation_id FROM gone WHERE conversation_id IS NOT NULL) AS conversations
    """
).bindparams(bindparam("days", type_=Integer), bindparam("deleted_headers", type_=JSONB))

# A holder is "<process id>/<run id>": a lease whose process the heartbeat found stopped (or dead) is free at once,
# not only when it expires.
_HOLDER_STOPPED = """
    EXISTS (SELECT 1 FROM service_process p
            WHERE p.id = split_part({holder}, '/', 1) AND p.stopped_at IS NOT NULL)
"""

_TAKE_LEASE = text(
    f"""
    INSERT INTO maintenance_lease (name, holder, expires_at)
    VALUES (:name, :holder, now() + make_interval(secs => :ttl))
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE maintenance_lease.expires_at <= now() OR maintenance_lease.holder = excluded.holder
       OR {_HOLDER_STOPPED.format(holder="maintenance_lease.holder")}
    RETURNING holder
    """
).bindparams(bindparam("ttl", type_=Integer))

_RELEASE_LEASE = text(
    """
    UPDATE maintenance_lease SET holder = NULL, expires_at = now(), last_run_at = now(), last_result = :result
    WHERE name = :name AND holder = :holder
    """
).bindparams(bindparam("result", type_=JSONB))


async def tenant_policies(conn: AsyncConnection, *, defaults_apply: bool) -> list[Any]:
    """Tenants some policy applies to: their own, or (without one) the defaults when those delete anything."""
    return list((await conn.execute(_TENANT_POLICIES, {"defaults_apply": defaults_apply})).all())


async def preview(conn: AsyncConnection, tenant_id: str, days: int | None, idle_days: int | None) -> Any:
    return (await conn.execute(_PREVIEW, {"tenant": tenant_id, "days": days, "idle_days": idle_days})).one()


async def mark_idle_conversations(conn: AsyncConnection, *, tenant_id: str, idle_days: int, limit: int) -> list[str]:
    params = {"tenant": tenant_id, "idle_days": idle_days, "limit": limit}
    return list((await conn.scalars(_MARK_IDLE_CONVERSATIONS, params)).all())


async def marked_conversations(conn: AsyncConnection, *, limit: int) -> list[str]:
    return list((await conn.scalars(_MARKED_CONVERSATIONS, {"limit": limit})).all())


async def empty_marked_conversations(conn: AsyncConnection, *, ids: list[str], limit: int) -> tuple[int, int]:
    """Removes up to `limit` of the marked conversations' items (deleted, or left to their responses)."""
    row = (await conn.execute(_EMPTY_MARKED_CONVERSATIONS, {"ids": ids, "limit": limit})).one()
    return int(row.deleted), int(row.detached)


async def delete_marked_conversations(conn: AsyncConnection, *, ids: list[str]) -> int:
    await conn.execute(_DETACH_CARRIED_ITEMS, {"ids": ids})
    return len((await conn.execute(_DELETE_MARKED_CONVERSATIONS, {"ids": ids})).all())


async def finish_deleted_conversations(conn: AsyncConnection, *, limit: int) -> tuple[list[str], int]:
    """Conversations their tenant deleted that no response needs any more, whose settling was skipped (another
    transaction held their row): settled now. Returns the ones found, and how many items went."""
    ids = await conversations_to_finish(conn, limit=limit)
    trimmed = [await settle_deleted_conversation(conn, conversation_id) for conversation_id in ids]
    return ids, sum(trimmed)


async def delete_expired_responses(conn: AsyncConnection, *, tenant_id: str, days: int, limit: int) -> tuple[int, int]:
    """Returns how many responses and items went, the items a deleted conversation no longer needs among them."""
    params = {
        "tenant": tenant_id,
        "days": days,
        "limit": limit,
        "deleted_answer": DELETED_RESPONSE_ANSWER,
        "deleted_headers": NOT_FOUND_HEADERS,
    }
    row = (await conn.execute(_DELETE_EXPIRED_RESPONSES, params)).one()
    trimmed = [
        await settle_deleted_conversation(conn, conversation_id) for conversation_id in sorted(row.conversations)
    ]
    return int(row.responses), int(row.items) + sum(trimmed)


# Keyed answers linked to no stored row (a `store: false` response's, which no thread holds, so neither a
# response's deletion nor a hard delete reaches them): they hold a response's content, so they go with the
# tenant's responses of their age, sooner than IDEMPOTENCY_KEY_TTL when the policy is shorter. Not an error
# answer, which holds no response (a deleted response's 404 among them: a retry would run and charge the turn
# again), nor a deferred answer (a 503 whose turn was stored later, `answer_response_id`): its response may
# outlive the policy's age (a later response builds on it).
_DELETE_UNLINKED_ANSWERS = text(
    """
    DELETE FROM idempotency_key WHERE (tenant_id, key) IN (
        SELECT tenant_id, key FROM idempotency_key
        WHERE tenant_id = :tenant AND state = 'completed' AND response_id IS NULL AND conversation_id IS NULL
          AND answer_response_id IS NULL AND status_code < 400 AND created_at < now() - make_interval(days => :days)
        LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    RETURNING key
    """
)


async def delete_unlinked_answers(conn: AsyncConnection, *, tenant_id: str, days: int, limit: int) -> int:
    params = {"tenant": tenant_id, "days": days, "limit": limit}
    return len((await conn.execute(_DELETE_UNLINKED_ANSWERS, params)).all())


async def take_lease(conn: AsyncConnection, *, name: str, holder: str, ttl: int) -> bool:
    return (await conn.scalar(_TAKE_LEASE, {"name": name, "holder": holder, "ttl": ttl})) is not None


async def release_lease(conn: AsyncConnection, *, name: str, holder: str, result: dict[str, Any]) -> None:
    await conn.execute(_RELEASE_LEASE, {"name": name, "holder": holder, "result": result})


async def lease_state(conn: AsyncConnection, name: str) -> Any:
    lease = maintenance_lease_table
    holder_live = literal_column(f"NOT {_HOLDER_STOPPED.format(holder='maintenance_lease.holder')}", Boolean)
    running = (lease.c.holder.is_not(None) & (lease.c.expires_at > func.now()) & holder_live).label("running")
    return (await conn.execute(select(lease, running).where(lease.c.name == name))).first()


async def tenant_by_name(conn: AsyncConnection, name: str) -> Any:
    stmt = select(tenant_table.c.id, tenant_table.c.name).where(tenant_table.c.name == name)
    return (await conn.execute(stmt)).first()


async def get_policy(conn: AsyncConnection, tenant_id: str) -> Any:
    policy = retention_policy_table
    return (await conn.execute(select(policy).where(policy.c.tenant_id == tenant_id))).first()


async def put_policy(conn: AsyncConnection, tenant_id: str, days: int | None, idle_days: int | None) -> None:
    values = {"responses_days": days, "conversations_idle_days": idle_days, "updated_at": func.now()}
    stmt = insert(retention_policy_table).values(tenant_id=tenant_id, **values)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=values))


async def delete_policy(conn: AsyncConnection, tenant_id: str) -> None:
    policy = retention_policy_table
    await conn.execute(delete(policy).where(policy.c.tenant_id == tenant_id))
