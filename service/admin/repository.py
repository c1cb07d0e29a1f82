"""SQL for the admin views, across tenants. Each page is one statement that reads one index range backwards:
a keyset (timestamp, id) < (cursor) instead of OFFSET, and no per-row follow-up queries. The indexes behind
every filter are in migration 2b8f4d6e0c12 (admin listing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from service.admin import search
from service.admin.cursor import Keyset, newest_first, probed_page
from service.admin.params import RESPONSE_STATUSES, ConversationFilters, ResponseFilters, TimeRange
from service.admin.statements import Statements
from service.db.models import conversation_table, item_table, response_table, tenant_table
from service.db.visibility import not_being_purged, not_deleted
from service.responses.status import RUNNING

conversation_t = conversation_table
response_t = response_table
item_t = item_table
tenant_t = tenant_table

# The model that served a turn, else the one asked for: what conversation.last_model records.
SERVED_MODEL = func.coalesce(response_t.c.upstream_model, response_t.c.model)


async def plan_each_page(conn: AsyncConnection) -> None:
    """For the rest of this transaction: plan each statement for its own values (the best plan depends on the
    tenant's size and the words searched; a generic plan cached after five runs can be orders of magnitude
    slower), and serially (a page is a short LIMIT walk; parallel workers only add start-up time)."""
    await conn.execute(
        text(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), "
            "set_config('max_parallel_workers_per_gather', '0', true)"
        )
    )


async def find_tenant_id(conn: AsyncConnection, tenant: str) -> str | None:
    """A tenant by id or by name."""
    value = await conn.scalar(
        select(tenant_t.c.id).where(or_(tenant_t.c.id == tenant, tenant_t.c.name == tenant)).limit(1)
    )
    return None if value is None else str(value)


def _time_range(column: Any, after: datetime | None, before: datetime | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if after is not None:
        conditions.append(column >= after)
    if before is not None:
        conditions.append(column < before)
    return conditions


def listed_between(column: Any, name: str, after: datetime | None, before: datetime | None) -> list[Any]:
    """A list's half-open time range on `column`, each bound that is set bound by name (`name`_after,
    `name`_before: admin/statements.py)."""
    conditions: list[Any] = []
    if after is not None:
        conditions.append(column >= bindparam(f"{name}_after", type_=column.type))
    if before is not None:
        conditions.append(column < bindparam(f"{name}_before", type_=column.type))
    return conditions


def _tenant_name(tenant_id: Any) -> Any:
    # A subquery in the select list, run for the rows of the page only: as a join it let the planner pick
    # orders that probe every tenant for every candidate row the page's walk reads, not only the page's.
    return select(tenant_t.c.name).where(tenant_t.c.id == tenant_id).scalar_subquery().label("tenant")


def _running_turn_status() -> Any:
    """The status of the turn holding the conversation's claim: its stored response's, or in_progress when its
    response is not stored yet (a turn no client sees before its end is stored by its finish,
    responses/turn_store.py). The claim itself does not touch `last_status`: left alone, the claim's UPDATE
    changes no indexed column and PostgreSQL can make it a HOT update, without new entries in the
    conversation's eight indexes (docs/benchmarks.md)."""
    stored = select(response_t.c.status).where(response_t.c.id == conversation_t.c.turn_response_id)
    return func.coalesce(stored.scalar_subquery(), literal("in_progress"))


# A thread with a turn in flight shows that turn's status (queued or in_progress); otherwise its last finished
# turn's, which the finishing statement stores.
_CURRENT_STATUS = case(
    (conversation_t.c.turn_response_id.is_(None), conversation_t.c.last_status), else_=_running_turn_status()
).label("last_status")


def _status_is(status: str) -> ColumnElement[bool]:
    """Whether the conversation's current status is `status`, row by row (a running status's page starts from
    running_conversations(status) instead of walking the list)."""
    c = conversation_t
    if status not in RUNNING:
        return and_(c.c.last_status == status, c.c.turn_response_id.is_(None))
    return and_(c.c.turn_response_id.is_not(None), _running_turn_status() == status)


def running_conversations(status: str) -> Any:
    """The ids (an array) of the conversations that may have a turn in `status` (queued or in_progress).

    Queued turns are background ones, stored at their begin: their conversations come from the running
    responses (few, on the response status index). Most turns in progress have no response row yet, and
    nothing indexed marks a claimed conversation (an index on the claim would cost every claim its HOT
    update): the claimed ones are read by a sequential scan of the conversations, the one way to them, then
    probed by primary key (cursor.probed_page), rather than left to a walk of the list's index whose length
    the planner guesses."""
    c, r = conversation_t, response_t
    if status == "in_progress":
        return select(func.array_agg(c.c.id)).where(c.c.turn_response_id.is_not(None)).scalar_subquery()
    return select(func.array_agg(r.c.conversation_id.distinct())).where(r.c.status == status).scalar_subquery()


def thread_columns(table: Any, status: Any, deleted: Any) -> tuple[Any, ...]:
    """A thread's listing row, from a conversation or a response chain (their rows share these columns),
    `status`, the thread's current one, and `deleted`, whether its tenant deleted it."""
    t = table.c
    return (
        t.id,
        t.tenant_id,
        _tenant_name(t.tenant_id),
        t.title,
        t.metadata,
        t.item_count,
        t.response_count,
        t.input_tokens,
        t.output_tokens,
        t.cost,
        t.created_at,
        t.updated_at,
        t.last_model,
        status,
        deleted.label("deleted"),
    )


_CONVERSATION_COLUMNS = thread_columns(conversation_t, _CURRENT_STATUS, conversation_t.c.deleted_at.is_not(None))


def _conversation_page(filters: ConversationFilters, tenant_id: str | None, keyset: Keyset) -> Select[Any]:
    """Newest activity first; every value bound by name (admin/statements.py)."""
    c = conversation_t
    conditions = [
        not_deleted(c),
        *listed_between(c.c.created_at, "created", filters.created_after, filters.created_before),
        *listed_between(c.c.updated_at, "updated", filters.updated_after, filters.updated_before),
    ]
    if tenant_id is not None:
        conditions.append(c.c.tenant_id == bindparam("tenant_id", type_=Text))
    if filters.model is not None:
        conditions.append(c.c.last_model == bindparam("model", type_=Text))
    if filters.status is not None:
        conditions.append(_status_is(filters.status))
    if filters.metadata:
        # Containment is what the jsonb_path_ops GIN index answers.
        conditions.append(c.c.metadata.op("@>")(bindparam("metadata", type_=JSONB)))
    if filters.q is not None:
        # Conversations with an item that matches (admin/search.py).
        keys = select(c.c.id, c.c.updated_at).where(*conditions)
        return search.search_page(
            keys, _CONVERSATION_COLUMNS, at=c.c.updated_at, row_id=c.c.id, owner=item_t.c.conversation_id, keyset=keyset
        )
    rows = select(*_CONVERSATION_COLUMNS).where(*conditions)
    if filters.status in RUNNING:
        return probed_page(running_conversations(filters.status), rows, c.c.updated_at, c.c.id, keyset)
    return newest_first(rows, c.c.updated_at, c.c.id, keyset)


conversation_pages = Statements(_conversation_page)


async def conversation_page(
    conn: AsyncConnection, filters: ConversationFilters, tenant_id: str | None, keyset: Keyset
) -> list[Any]:
    walk_first = await search.walk_budget(conn, filters.q, keyset.limit + 1, owners="threads")
    return await conversation_pages.page(conn, filters, tenant_id, keyset, walk_first)


async def get_conversation(conn: AsyncConnection, conversation_id: str) -> Any:
    """The conversation's listing row; one its tenant deleted too, marked (db/visibility.py)."""
    stmt = select(*_CONVERSATION_COLUMNS).where(
        conversation_t.c.id == conversation_id, not_being_purged(conversation_t)
    )
    return (await conn.execute(stmt)).first()


_RESPONSE_COLUMNS = (
    response_t.c.id,
    response_t.c.tenant_id,
    _tenant_name(response_t.c.tenant_id),
    response_t.c.conversation_id,
    response_t.c.thread_id,
    response_t.c.previous_response_id,
    response_t.c.status,
    response_t.c.model,
    response_t.c.upstream_model,
    response_t.c.input_tokens,
    response_t.c.output_tokens,
    response_t.c.cost,
    response_t.c.error,
    response_t.c.incomplete_details,
    response_t.c.background,
    response_t.c.created_at,
    response_t.c.completed_at,
    response_t.c.deleted_at,
    response_t.c.request_id,
)


def _response_page(filters: ResponseFilters, tenant_id: str | None, keyset: Keyset) -> Select[Any]:
    """Newest first; every value bound by name (admin/statements.py)."""
    r = response_t
    conditions = listed_between(r.c.created_at, "created", filters.created_after, filters.created_before)
    if tenant_id is not None:
        conditions.append(r.c.tenant_id == bindparam("tenant_id", type_=Text))
    if filters.model is not None:
        conditions.append(SERVED_MODEL == bindparam("model", type_=Text))  # noqa: SIM300 (an expression, not a constant)
    if filters.status is not None:
        conditions.append(r.c.status == filters.status)
    if filters.conversation is not None:
        conditions.append(r.c.conversation_id == bindparam("conversation", type_=Text))
    if filters.q is not None:
        # Responses with an input or output item that matches (admin/search.py); items added to a conversation
        # directly belong to no response.
        keys = select(r.c.id, r.c.created_at).where(*conditions)
        return search.search_page(
            keys, _RESPONSE_COLUMNS, at=r.c.created_at, row_id=r.c.id, owner=item_t.c.response_id, keyset=keyset
        )
    return newest_first(select(*_RESPONSE_COLUMNS).where(*conditions), r.c.created_at, r.c.id, keyset)


response_pages = Statements(_response_page)


async def response_page(
    conn: AsyncConnection, filters: ResponseFilters, tenant_id: str | None, keyset: Keyset
) -> list[Any]:
    walk_first = await search.walk_budget(conn, filters.q, keyset.limit + 1, owners="responses")
    return await response_pages.page(conn, filters, tenant_id, keyset, walk_first)


def _usage_columns() -> list[Any]:
    r = response_t
    by_status = [func.count().filter(r.c.status == status).label(status) for status in RESPONSE_STATUSES]
    return [
        func.count().label("responses"),
        *by_status,
        func.coalesce(func.sum(r.c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(r.c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(r.c.cost), 0).label("cost"),
    ]


async def usage_stats(conn: AsyncConnection, window: TimeRange) -> tuple[list[Any], list[Any]]:
    """Over the window: response counts and usage per tenant, per model and in total (one grouped scan with
    GROUPING SETS; `no_tenant`/`no_model` tell the groups apart), and conversations created per tenant."""
    r = response_t
    model = SERVED_MODEL.label("model")
    grouped = (
        select(
            func.grouping(r.c.tenant_id).label("no_tenant"),
            func.grouping(SERVED_MODEL).label("no_model"),
            r.c.tenant_id,
            tenant_t.c.name.label("tenant"),
            model,
            *_usage_columns(),
        )
        .join(tenant_t, tenant_t.c.id == r.c.tenant_id)
        .where(*_time_range(r.c.created_at, window.created_after, window.created_before))
        .group_by(func.grouping_sets(tuple_(r.c.tenant_id, tenant_t.c.name), tuple_(SERVED_MODEL), tuple_()))
    )
    conversations = (
        select(conversation_t.c.tenant_id, tenant_t.c.name.label("tenant"), func.count().label("conversations"))
        .join(tenant_t, tenant_t.c.id == conversation_t.c.tenant_id)
        .where(
            not_deleted(conversation_t),
            *_time_range(conversation_t.c.created_at, window.created_after, window.created_before),
        )
        .group_by(conversation_t.c.tenant_id, tenant_t.c.name)
    )
    return list((await conn.execute(grouped)).all()), list((await conn.execute(conversations)).all())


async def delete_thread(conn: AsyncConnection, thread_id: str) -> int:
    """Hard-delete the thread (a conversation or a response chain) and everything holding its content: every
    item and response of it, found by thread_id (chains that continue a conversation's responses are in its
    thread), with them what references them ON DELETE CASCADE (event logs, idempotency records, webhook
    deliveries, a chain's totals), then the conversation. Returns how many responses went."""
    await conn.execute(delete(item_t).where(item_t.c.thread_id == thread_id))
    deleted = await conn.execute(
        delete(response_t).where(response_t.c.thread_id == thread_id).returning(response_t.c.id)
    )
    response_ids = list(deleted.scalars())
    await conn.execute(delete(conversation_t).where(conversation_t.c.id == thread_id))
    return len(response_ids)


class _Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: Select[Any], options: str) -> None:
        self.statement = statement
        self.explain_options = options


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXPLAIN ({element.explain_options}) " + compiler.process(element.statement, **kw)


async def explain(conn: AsyncConnection, statement: Select[Any], options: str = "COSTS OFF") -> str:
    """The plan of a page statement, bound exactly as it runs (for the plan tests and the benchmark)."""
    return "\n".join(str(line) for line in (await conn.scalars(_Explain(statement, options))).all())
