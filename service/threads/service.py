"""Operators' view of threads of both kinds (a conversation, or a chain of responses linked by
previous_response_id): the listing, one thread as the tree of its responses, and hard deletion of a whole
thread. Each operation is one short read or one short transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.admin import params
from service.admin import repository as admin_repository
from service.admin.cursor import encode_cursor
from service.admin.service import _keyset_list, conversation_row_view, listed_tenant_id, response_row_view
from service.conversations import repository as conversations
from service.conversations.service import conversation_locked, conversation_not_found
from service.errors import Conflict, NotFound
from service.items import item_view
from service.responses.status import RUNNING
from service.threads import repository

Pairs = Iterable[tuple[str, str]]


def thread_not_found(thread_id: str) -> NotFound:
    return NotFound(f"Thread with id '{thread_id}' not found.")


def thread_locked(thread_id: str) -> Conflict:
    return Conflict(
        f"A turn is running in thread '{thread_id}'. Retry when it has finished.",
        code="thread_locked",
        headers={"Retry-After": "1"},
    )


def thread_row_view(row: Any) -> dict[str, Any]:
    return {**conversation_row_view(row), "object": "admin.thread", "kind": row.kind}


async def list_threads(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    filters, keyset = params.thread_query(query)
    async with engine.connect() as conn:
        await admin_repository.plan_each_page(conn)
        tenant_id = await listed_tenant_id(conn, filters.tenant)
        rows = await repository.thread_page(conn, filters, tenant_id, keyset)
    return _keyset_list("threads", rows, keyset, "updated_at", thread_row_view)


def _response_node(row: Any, items: list[Any]) -> dict[str, Any]:
    view = response_row_view(row)
    view["input"] = [item_view(i.id, i.status, i.body) for i in items if not i.is_output]
    view["output"] = [item_view(i.id, i.status, i.body) for i in items if i.is_output]
    return view


async def get_thread(engine: AsyncEngine, thread_id: str, query: Pairs) -> dict[str, Any]:
    """The thread's listing row and a page of its responses, oldest first: each names its parent
    (previous_response_id), so branches show as responses sharing a parent; each carries its input and output
    items. `responses.next_cursor` continues with ?cursor=..."""
    keyset = params.thread_detail_query(thread_id, query)
    async with engine.connect() as conn:
        row = await repository.get_thread(conn, thread_id)
        if row is None:
            raise thread_not_found(thread_id)
        responses = await repository.thread_responses(conn, thread_id, keyset)
        shown = responses[: keyset.limit]
        items = await repository.response_items(conn, [r.id for r in shown])
    by_response: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        by_response[item.response_id].append(item)
    has_more = len(responses) > keyset.limit
    last = shown[-1] if shown else None
    view = thread_row_view(row)
    view["responses"] = {
        "object": "list",
        "data": [_response_node(r, by_response[r.id]) for r in shown],
        "has_more": has_more,
        "next_cursor": encode_cursor(f"thread {thread_id}", last.created_at, last.id) if has_more and last else None,
    }
    return view


async def thread_to_delete(engine: AsyncEngine, thread_id: str) -> dict[str, Any]:
    """The thread's listing row, with the counts of everything its hard delete takes."""
    async with engine.connect() as conn:
        row = await repository.get_thread(conn, thread_id)
        if row is None:
            raise thread_not_found(thread_id)
        responses, items = await repository.thread_contents(conn, thread_id)
    view = thread_row_view(row)
    view["response_count"], view["item_count"] = responses, items
    return view


async def delete_thread(engine: AsyncEngine, thread_id: str) -> dict[str, Any]:
    deleted = await _hard_delete(engine, thread_id, conversation_only=False)
    return {"id": thread_id, "object": "admin.thread.deleted", "deleted": True, "deleted_responses": deleted}


async def delete_conversation_thread(engine: AsyncEngine, conversation_id: str) -> dict[str, Any]:
    """`DELETE /admin/conversations/{id}`: the same hard delete, for a conversation's thread only."""
    deleted = await _hard_delete(engine, conversation_id, conversation_only=True)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True, "deleted_responses": deleted}


async def _hard_delete(engine: AsyncEngine, thread_id: str, *, conversation_only: bool) -> int:
    """Hard delete of the whole thread: every response and item of it and what holds their content (event
    logs, idempotency records), and the conversation or the chain's totals; how many responses went. Refused
    while a turn runs in it: the conversation's claim, a stored running response of the thread (a chain turn
    continuing one of the conversation's responses is in its thread), a plain turn continuing one of them."""
    async with engine.begin() as conn:
        conversation = await conversations.lock_conversation(conn, None, thread_id)
        if conversation is None and conversation_only:
            raise conversation_not_found(thread_id)
        if conversation is not None and conversation.claimed:
            raise conversation_locked(thread_id)
        responses = await repository.lock_chain(conn, thread_id)
        if conversation is None and not responses:
            raise thread_not_found(thread_id)
        if any(r.status in RUNNING for r in responses) or await repository.thread_has_running_child(conn, thread_id):
            raise thread_locked(thread_id)
        return await admin_repository.delete_thread(conn, thread_id)
