"""Responses once stored: reading, deleting, listing their input items, and finishing the turns whose process
died. A turn's own life (begin, finish, fail) is service/responses/turn.py."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import InvalidRequest, NotFound
from service.idempotency import repository as idempotency_keys
from service.items import item_view
from service.pagination import PageRequest, item_list
from service.responses import repository
from service.responses.turn import INTERRUPTED_ERROR
from service.responses.views import ResponseState

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
        if not await repository.delete_response(conn, tenant_id, response_id):
            raise NotFound(f"Response with id '{response_id}' not found.")
        await idempotency_keys.forget_deleted_response(conn, tenant_id, response_id)
    return {"id": response_id, "object": "response", "deleted": True}


async def list_input_items(engine: AsyncEngine, tenant_id: str, response_id: str, page: PageRequest) -> dict[str, Any]:
    async with engine.connect() as conn:
        if await repository.get_response(conn, tenant_id, response_id) is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        after = None
        if page.after is not None:
            after = await repository.input_item_ordinal(conn, response_id, page.after)
            if after is None:
                raise InvalidRequest(f"No input item with id '{page.after}' in response '{response_id}'", param="after")
        rows = await repository.list_input_items(conn, response_id, page, after)
    data = [item_view(r.id, r.status, r.body) for r in rows[: page.limit]]
    return item_list(data, has_more=len(rows) > page.limit)


async def reap_stale_turns(engine: AsyncEngine, ttl_seconds: float) -> list[str]:
    """Finish turns whose process died: free expired claims and mark their responses failed."""
    async with engine.begin() as conn:
        holders = await repository.release_expired_claims(conn)
        failed = await repository.fail_stale_responses(
            conn, holders=holders, older_than_seconds=ttl_seconds, error=INTERRUPTED_ERROR
        )
    if failed:
        logger.warning("marked %d interrupted response(s) as failed", len(failed))
    return failed
