"""SQL for responses: the response rows and their input/output items (a turn's own statements: turn_store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.conversations.repository import lock_for_response_delete, settle_deleted_conversation
from service.db.models import (
    conversation_table,
    item_table,
    response_table,
    running_chain_turn_table,
    service_process_table,
)
from service.db.ownership import owned_by
from service.ids import can_exist
from service.pagination import PageRequest, keyset_page
from service.responses.status import RUNNING

response_t = response_table
item_t = item_table
conversation_t = conversation_table
running_child_t = running_chain_turn_table

# Claims whose holder died: free them and report which responses held them (the old value, via the subquery).
# The holder's turn did not finish while it held the claim, so the thread's last turn failed.
_RELEASE_EXPIRED_CLAIMS = text(
    """
    UPDATE conversation c SET turn_response_id = NULL, turn_expires_at = NULL, turn_claimed_at = NULL,
        last_status = 'failed'
    FROM (SELECT id, turn_response_id FROM conversation
          WHERE turn_expires_at < now() FOR UPDATE SKIP LOCKED) expired
    WHERE c.id = expired.id
    RETURNING expired.turn_response_id
    """
)

# Plain chain turns (listed on their chain's row while they run) whose listing expired: their process died and
# no heartbeat reaper failed them. As for an expired claim, the chain's last turn failed.
_RELEASE_EXPIRED_CHAIN_TURNS = text(
    """
    UPDATE response_chain ch SET turn_response_ids = '{}', turn_expires_at = NULL, last_status = 'failed'
    FROM (SELECT id, turn_response_ids FROM response_chain
          WHERE turn_expires_at < now() FOR UPDATE SKIP LOCKED) expired
    WHERE ch.id = expired.id
    RETURNING expired.turn_response_ids
    """
)

_DROP_EXPIRED_RUNNING_CHILDREN = text(
    "DELETE FROM running_chain_turn WHERE expires_at <= now() RETURNING previous_response_id"
)

# A turn failed because its process stopped or its claim expired is one of its thread's responses, as a turn that
# fails on its own is (its finish counts it): its chain ends with it, and its chain or conversation counts it.
_FAIL_CHAINS = text(
    """
    UPDATE response_chain ch SET last_status = 'failed', response_count = ch.response_count + failed.turns
    FROM (SELECT id, count(*) AS turns FROM unnest(CAST(:threads AS text[])) AS id GROUP BY id) failed
    WHERE ch.id = failed.id
    """
)
_COUNT_FAILED_IN_CONVERSATIONS = text(
    """
    UPDATE conversation c SET response_count = c.response_count + failed.turns
    FROM (SELECT id, count(*) AS turns FROM unnest(CAST(:conversations AS text[])) AS id GROUP BY id) failed
    WHERE c.id = failed.id
    """
)


async def get_response(conn: AsyncConnection, tenant_id: str, response_id: str) -> Any:
    if not can_exist(response_id):
        return None
    stmt = select(response_t).where(
        response_t.c.id == response_id, owned_by(response_t.c.tenant_id, tenant_id), response_t.c.deleted_at.is_(None)
    )
    return (await conn.execute(stmt)).first()


async def output_items(conn: AsyncConnection, response_id: str) -> list[Any]:
    stmt = (
        select(item_t.c.id, item_t.c.status, item_t.c.body)
        .where(item_t.c.response_id == response_id, item_t.c.is_output.is_(True))
        .order_by(item_t.c.ordinal)
    )
    return list((await conn.execute(stmt)).all())


async def update_response(conn: AsyncConnection, response_id: str, values: dict[str, Any]) -> None:
    await conn.execute(update(response_t).where(response_t.c.id == response_id).values(**values))


async def list_input_items(
    conn: AsyncConnection, response_id: str, page: PageRequest, after_ordinal: int | None
) -> list[Any]:
    stmt = select(item_t.c.id, item_t.c.status, item_t.c.body).where(
        item_t.c.response_id == response_id, item_t.c.is_output.is_(False)
    )
    return list((await conn.execute(keyset_page(stmt, item_t.c.ordinal, page, after_ordinal))).all())


async def input_item_ordinal(conn: AsyncConnection, response_id: str, item_id: str) -> int | None:
    if not can_exist(item_id):
        return None
    stmt = select(item_t.c.ordinal).where(
        item_t.c.response_id == response_id, item_t.c.is_output.is_(False), item_t.c.id == item_id
    )
    value = await conn.scalar(stmt.limit(1))
    return None if value is None else int(value)


async def delete_response(conn: AsyncConnection, response_id: str, conversation_id: str | None) -> bool:
    """Delete a response (its owner's, read by get_response). If a later response builds on it, stored or still
    running, it is only hidden, so that chain's history stays whole; items that are also conversation items
    stay in their conversation. Ancestors an earlier delete hid go with it once nothing builds on them any more:
    else their content would outlive its deletion for good. The row is locked first (after its conversation's,
    `conversation_id` as get_response read it: conversations/repository.py, lock_for_response_delete): a turn
    beginning on it meanwhile waits, then finds it gone or hidden; one that began before is seen as its child.
    False when it is no longer there to delete under the lock: another delete was first."""
    if conversation_id is not None:
        await lock_for_response_delete(conn, conversation_id)
    locked = select(response_t.c.id).where(response_t.c.id == response_id, response_t.c.deleted_at.is_(None))
    if (await conn.execute(locked.with_for_update())).first() is None:
        return False
    if await _has_children(conn, response_id):
        await update_response(conn, response_id, {"deleted_at": func.now()})
        return True
    await _delete_hidden_ancestors(conn, await _delete_childless(conn, response_id))
    return True


async def _delete_hidden_ancestors(conn: AsyncConnection, parent: str | None) -> None:
    while parent is not None and await _hidden_without_children(conn, parent):
        parent = await _delete_childless(conn, parent)


async def _has_children(conn: AsyncConnection, response_id: str) -> bool:
    """A stored response continuing it, or a plain turn doing so that has not stored its response yet (its
    note expires if its process died)."""
    stored = exists().where(response_t.c.previous_response_id == response_id)
    running = exists().where(
        running_child_t.c.previous_response_id == response_id, running_child_t.c.expires_at > func.now()
    )
    return bool(await conn.scalar(select(or_(stored, running))))


async def _hidden_without_children(conn: AsyncConnection, response_id: str) -> bool:
    """Whether the response was deleted but kept as history, and no longer is; its row stays locked."""
    stmt = select(response_t.c.deleted_at.is_not(None)).where(response_t.c.id == response_id).with_for_update()
    return bool(await conn.scalar(stmt)) and not await _has_children(conn, response_id)


async def _delete_childless(conn: AsyncConnection, response_id: str) -> str | None:
    """Delete the row and the items only it holds; the response it continued, if any. Its items in a conversation
    stay there; a conversation its tenant deleted keeps only what its other responses still need."""
    await conn.execute(
        update(item_t)
        .where(item_t.c.response_id == response_id, item_t.c.conversation_id.is_not(None))
        .values(response_id=None)
    )
    stmt = delete(response_t).where(response_t.c.id == response_id)
    returned = stmt.returning(response_t.c.previous_response_id, response_t.c.conversation_id)
    deleted = (await conn.execute(returned)).first()
    if deleted is None:
        return None
    if deleted.conversation_id is not None:
        await settle_deleted_conversation(conn, deleted.conversation_id)
    previous: str | None = deleted.previous_response_id
    return previous


async def release_expired_claims(conn: AsyncConnection) -> list[str]:
    return [row[0] for row in await conn.execute(_RELEASE_EXPIRED_CLAIMS) if row[0] is not None]


async def release_expired_chain_turns(conn: AsyncConnection) -> list[str]:
    """Drop the expired listings of plain chain turns, failing their chains' last status; returns the turns."""
    return [turn for row in await conn.execute(_RELEASE_EXPIRED_CHAIN_TURNS) for turn in row[0]]


async def drop_expired_running_children(conn: AsyncConnection) -> None:
    """Remove the notes of plain chain turns that expired (their process died before their finish)."""
    await delete_hidden_if_unneeded(conn, (await conn.execute(_DROP_EXPIRED_RUNNING_CHILDREN)).scalars().all())


async def delete_hidden_if_unneeded(conn: AsyncConnection, response_ids: Sequence[str]) -> None:
    """Responses whose running children's notes were just removed: those a delete only hid for them go now, with
    the hidden ancestors nothing else needs."""
    for response_id in sorted(set(response_ids)):
        await _delete_hidden_ancestors(conn, response_id)


async def count_failed_turns(conn: AsyncConnection, failed: Sequence[Any]) -> None:
    """Responses failed for their process or their claim (`failed`: rows of each one's thread_id and
    conversation_id): the chains among their threads end with a failed turn (a conversation's thread has no chain
    row: its claim's release says so), and each is counted in its chain's or conversation's responses."""
    threads = sorted(row.thread_id for row in failed)
    if threads:
        await conn.execute(_FAIL_CHAINS, {"threads": threads})
    conversations = sorted(row.conversation_id for row in failed if row.conversation_id is not None)
    if conversations:
        await conn.execute(_COUNT_FAILED_IN_CONVERSATIONS, {"conversations": conversations})


async def fail_stale_responses(
    conn: AsyncConnection, *, holders: list[str], older_than_seconds: float, error: dict[str, Any]
) -> list[str]:
    """Fail running responses whose claim expired, and claim-less running responses older than the TTL (the
    longest any live process declared in its heartbeat, so that a process with a shorter one never fails a live turn
    of a process with a longer one) that no live process lists as running (its turn may outlive any TTL), and
    with them their chains' last status."""
    processes = service_process_table
    live = processes.c.stopped_at.is_(None)
    longest = select(func.max(processes.c.turn_lock_ttl)).where(live).scalar_subquery()
    ttl = func.greatest(bindparam("ttl", older_than_seconds), longest)
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, ttl)
    no_live_claim = ~exists().where(
        conversation_t.c.turn_response_id == response_t.c.id, conversation_t.c.turn_expires_at > func.now()
    )
    listed_live = exists().where(live, response_t.c.id == func.any(processes.c.running_responses))
    stale = or_(response_t.c.id.in_(holders), and_(response_t.c.created_at < cutoff, no_live_claim, ~listed_live))
    stmt = (
        update(response_t)
        .where(response_t.c.status.in_(RUNNING), stale)
        .values(status="failed", error=error, completed_at=func.now())
        .returning(response_t.c.id, response_t.c.thread_id, response_t.c.conversation_id)
    )
    failed = (await conn.execute(stmt)).all()
    await count_failed_turns(conn, failed)
    return [row.id for row in failed]
