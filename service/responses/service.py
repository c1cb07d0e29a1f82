"""Responses once stored: reading, deleting, listing their input items, and finishing the turns whose process
died. A turn's own life (begin, finish, fail) is service/responses/turn.py."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import Conflict, NotFound
from service.idempotency import repository as idempotency_keys
from service.observability import turns as observe_turns
from service.pagination import PageRequest, item_page
from service.responses import repository
from service.responses.status import RUNNING
from service.responses.turn import INTERRUPTED_ERROR
from service.responses.views import ResponseState
from service.threads import repository as threads

logger = logging.getLogger("service.turns")


async def get_response(engine: AsyncEngine, tenant_id: str, response_id: str) -> ResponseState:
    async with engine.connect() as conn:
        row = await repository.get_response(conn, tenant_id, response_id)
        if row is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        output = await repository.output_items(conn, response_id)
    return ResponseState.from_row(row, output)


async def delete_response(engine: AsyncEngine, tenant_id: str, response_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        row = await repository.get_response(conn, tenant_id, response_id)
        if row is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        if row.status in RUNNING:
            # Its finish stores the output under this row and releases its conversation's claim in one statement:
            # with the row gone, that statement would fail and leave the conversation claimed until TURN_LOCK_TTL.
            raise Conflict(
                f"Response '{response_id}' is still running; delete it once it has ended (a background response "
                "can be cancelled first)",
                code="response_in_progress",
            )
        if row.pending_chain_id is not None:
            # A chain turn not yet in its chain's totals (service/threads/totals.py) is counted before it goes,
            # as every other deleted response of the chain was.
            await threads.fold_pending_of(conn, row.pending_chain_id)
        # Before the delete, which would take the keys' rows with it (ON DELETE CASCADE): a retry would run again.
        await idempotency_keys.forget_deleted_response(conn, tenant_id, response_id)
        if not await repository.delete_response(conn, response_id, row.conversation_id):
            raise NotFound(f"Response with id '{response_id}' not found.")
    return {"id": response_id, "object": "response", "deleted": True}


async def list_input_items(engine: AsyncEngine, tenant_id: str, response_id: str, page: PageRequest) -> dict[str, Any]:
    async with engine.connect() as conn:
        if await repository.get_response(conn, tenant_id, response_id) is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return await item_page(
            page,
            anchor=lambda item_id: repository.input_item_ordinal(conn, response_id, item_id),
            fetch=lambda after: repository.list_input_items(conn, response_id, page, after),
            unknown_after=f"No input item with id '{page.after}' in response '{response_id}'",
        )


async def reap_stale_turns(engine: AsyncEngine, ttl_seconds: float) -> list[str]:
    """Finish turns whose process died: free expired claims (and chains' expired listings and notes of plain
    turns) and mark their responses failed."""
    async with engine.begin() as conn:
        holders = await repository.release_expired_claims(conn)
        failed = await repository.fail_stale_responses(
            conn, holders=holders, older_than_seconds=ttl_seconds, error=INTERRUPTED_ERROR
        )
        failed += await repository.release_expired_chain_turns(conn)
    async with engine.begin() as conn:
        await repository.drop_expired_running_children(conn)
    if failed:
        logger.warning("marked %d interrupted response(s) as failed", len(failed))
    # The turns whose claim expired ended too, a plain one's stored response with none.
    observe_turns.turns_failed_for_their_process(len(set(failed) | set(holders)))
    return failed
