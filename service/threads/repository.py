"""SQL for the admin view of threads of both kinds: conversations and response chains, listed side by side.

A page is the UNION ALL of two keyset walks, one per kind, each the first rows of one index range of its own
table in (updated_at, id) order, merged and cut to the page: the same indexes and plans as the conversation
listing (admin/repository.py), once per kind. Search reads items by their thread_id, so it finds a word in any
item of either kind of thread, including chains that continue a conversation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from service.admin import search
from service.admin.cursor import Keyset, newest_first, page_rows, probed_page
from service.admin.params import ThreadFilters
from service.admin.repository import (
    _CONVERSATION_COLUMNS,
    _CURRENT_STATUS,
    _RESPONSE_COLUMNS,
    _status_is,
    _tenant_name,
    listed_between,
    running_conversations,
    thread_columns,
)
from service.admin.statements import Statements
from service.db.models import conversation_table, item_table, response_chain_table, response_table
from service.db.visibility import not_being_purged, not_deleted
from service.responses.status import RUNNING
from service.threads import totals as chain_totals

conversation_t = conversation_table
chain_t = response_chain_table
response_t = response_table
item_t = item_table

KINDS = ("conversation", "chain")


def _running_in(thread_id: Any) -> Any:
    """The status of the newest turn still running in the thread, if any (the partial index of running
    responses by thread answers it without reading the thread's finished responses)."""
    return (
        select(response_t.c.status)
        .where(response_t.c.thread_id == thread_id, response_t.c.status.in_(RUNNING))
        .order_by(response_t.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )


# A plain turn running in the chain: stored only when it ends, it is listed on the chain's row meanwhile.
_UNSEEN_TURN_RUNS = func.cardinality(chain_t.c.turn_response_ids) > 0

# A chain with a turn in flight shows that turn's status (a stored one's, else in_progress), otherwise its last
# finished turn's.
_CHAIN_STATUS = func.coalesce(
    _running_in(chain_t.c.id), case((_UNSEEN_TURN_RUNS, literal("in_progress"))), chain_t.c.last_status
)

_CHAIN_COLUMNS = (
    *thread_columns(chain_t, _CHAIN_STATUS.label("last_status"), false()),
    literal("chain").label("kind"),
)


def _chain_status_is(status: str) -> ColumnElement[bool]:
    """Whether the chain's current status is `status`, row by row (a running status's page starts from
    _running_chains(status) instead of walking the list)."""
    if status not in RUNNING:
        return and_(
            chain_t.c.last_status == status,
            not_(_UNSEEN_TURN_RUNS),
            not_(exists().where(_running_filter(chain_t.c.id))),
        )
    if status == "in_progress":
        return and_(or_(_UNSEEN_TURN_RUNS, exists().where(_running_filter(chain_t.c.id))), _CHAIN_STATUS == status)  # noqa: SIM300 (an expression)
    running: ColumnElement[bool] = _running_in(chain_t.c.id) == status
    return running


def _running_chains(status: str) -> Any:
    """The ids (an array) of the chains that may have a turn in `status`: the threads of the stored running
    turns (few, on the response status index), and for in_progress the chains listing a plain turn, stored only
    when it ends; as for conversations, nothing indexed marks those (an index on the mark would cost every such
    turn its HOT update), so they are read by a sequential scan of the chains (admin/repository.py's
    running_conversations says why that beats a walk)."""
    candidates: Any = select(response_t.c.thread_id.label("id")).where(response_t.c.status == status)
    if status == "in_progress":
        candidates = union_all(candidates, select(chain_t.c.id).where(_UNSEEN_TURN_RUNS))
    ids = candidates.subquery("candidates")
    return select(func.array_agg(ids.c.id.distinct())).scalar_subquery()


def _running_filter(thread_id: Any) -> ColumnElement[bool]:
    return and_(response_t.c.thread_id == thread_id, response_t.c.status.in_(RUNNING))


def _conditions(table: Any, filters: ThreadFilters, tenant_id: str | None) -> list[ColumnElement[bool]]:
    """The list's filters on one kind's table, every value bound by name (admin/statements.py)."""
    conditions = [
        *listed_between(table.c.created_at, "created", filters.created_after, filters.created_before),
        *listed_between(table.c.updated_at, "updated", filters.updated_after, filters.updated_before),
    ]
    if table is conversation_t:
        conditions.append(not_deleted(table))
    if tenant_id is not None:
        conditions.append(table.c.tenant_id == bindparam("tenant_id", type_=Text))
    if filters.model is not None:
        conditions.append(table.c.last_model == bindparam("model", type_=Text))
    if filters.metadata:
        # Containment is what the jsonb_path_ops GIN indexes answer.
        conditions.append(table.c.metadata.op("@>")(bindparam("metadata", type_=JSONB)))
    if filters.status is not None:
        conditions.append(_status_is(filters.status) if table is conversation_t else _chain_status_is(filters.status))
    return conditions


# A thread's id is its conversation's or its first response's (service/ids.py gives each kind its prefix).
_ID_PREFIXES = {"conversation": "conv_", "chain": "resp_"}


def _kind_page(
    kind: str,
    table: Any,
    stmt: Select[Any],
    keyset: Keyset,
    *,
    matches: search.Matches | None,
    status: str | None,
) -> Select[Any]:
    """One kind's page; with a search, the matching threads of that kind (admin/search.py), by item.thread_id;
    with a running status, the candidates of that kind probed by primary key."""
    if matches is None:
        if status in RUNNING:
            candidates = running_conversations(status) if table is conversation_t else _running_chains(status)
            return probed_page(candidates, stmt, table.c.updated_at, table.c.id, keyset)
        return newest_first(stmt, table.c.updated_at, table.c.id, keyset)
    both = search.newest_matching(
        stmt,
        at=table.c.updated_at,
        row_id=table.c.id,
        owner=item_t.c.thread_id,
        matches=matches,
        keyset=keyset,
        name=kind,
        id_prefix=_ID_PREFIXES[kind],
    )
    return select(both.subquery())


_ROW_COLUMNS = (
    "tenant_id",
    "title",
    "metadata",
    "item_count",
    "response_count",
    "input_tokens",
    "output_tokens",
    "cost",
    "created_at",
    "last_model",
)


def _thread_page(filters: ThreadFilters, tenant_id: str | None, keyset: Keyset) -> Select[Any]:
    """Newest activity first, both kinds (or `filters.kind`); every value bound by name (admin/statements.py).

    The walks select only (id, updated_at, kind); the columns, with their subqueries (tenant name, current
    status), are read once, for the page's rows: planned once rather than once per branch, which made planning
    the largest part of a search page (docs/benchmarks.md). Each page row reads its thread's row by primary key
    (a LATERAL subquery with LIMIT 1, which stays a per-row probe): as a join, the planner could hash a whole
    table for a page of a few rows when it misjudged the page's size."""
    matches = search.matching_items(item_t.c.thread_id) if filters.q is not None else None
    parts = []
    for kind, table in (("conversation", conversation_t), ("chain", chain_t)):
        if filters.kind in (None, kind):
            stmt = select(table.c.id, table.c.updated_at, literal(kind).label("kind")).where(
                *_conditions(table, filters, tenant_id)
            )
            parts.append(_kind_page(kind, table, stmt, keyset, matches=matches, status=filters.status))
    merged = union_all(*parts).subquery("merged") if len(parts) > 1 else parts[0].subquery("merged")
    page = select(merged).order_by(merged.c.updated_at.desc(), merged.c.id.desc()).limit(page_rows()).subquery("page")
    c, ch = conversation_t, chain_t
    conversation_row = (
        select(*(c.c[name] for name in _ROW_COLUMNS), _CURRENT_STATUS)
        .where(c.c.id == page.c.id, page.c.kind == "conversation")
        .limit(1)
        .lateral("conversation_row")
    )
    chain_row = (
        select(*(ch.c[name] for name in _ROW_COLUMNS), _CHAIN_STATUS.label("last_status"))
        .where(ch.c.id == page.c.id, page.c.kind == "chain")
        .limit(1)
        .lateral("chain_row")
    )

    def either(column: str) -> Any:
        return func.coalesce(conversation_row.c[column], chain_row.c[column])

    joined = page.outerjoin(conversation_row, true()).outerjoin(chain_row, true())
    return (
        select(
            page.c.id,
            either("tenant_id").label("tenant_id"),
            _tenant_name(either("tenant_id")),
            *(either(name).label(name) for name in _ROW_COLUMNS[1:-2]),
            either("created_at").label("created_at"),
            page.c.updated_at,
            either("last_model").label("last_model"),
            either("last_status").label("last_status"),
            false().label("deleted"),  # the list leaves out the conversations their tenants deleted
            page.c.kind,
        )
        .select_from(joined)
        .order_by(page.c.updated_at.desc(), page.c.id.desc())
    )


thread_pages = Statements(_thread_page)


async def thread_page(
    conn: AsyncConnection, filters: ThreadFilters, tenant_id: str | None, keyset: Keyset
) -> list[Any]:
    walk_first = await search.walk_budget(conn, filters.q, keyset.limit + 1, owners="threads")
    return await thread_pages.page(conn, filters, tenant_id, keyset, walk_first)


def _kept_responses_row(thread_id: str) -> Select[Any]:
    """The row of a conversation purged for idleness whose responses were kept (their own policy keeps them):
    no listed thread holds them, but they still name it as their thread. Its figures are theirs; the latest
    one's model and status are the thread's last."""
    r = response_t
    newest_first = (r.c.created_at.desc(), r.c.id.desc())
    latest = select(r.c.model, r.c.status).where(r.c.thread_id == thread_id).order_by(*newest_first)
    latest_row = latest.limit(1).subquery()
    kept = (
        select(
            func.min(r.c.tenant_id).label("tenant_id"),
            func.count().label("response_count"),
            func.coalesce(func.sum(r.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(r.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(r.c.cost), 0).label("cost"),
            func.min(r.c.created_at).label("created_at"),
            func.max(func.coalesce(r.c.completed_at, r.c.created_at)).label("updated_at"),
        )
        .where(r.c.thread_id == thread_id)
        .subquery()
    )
    items = select(func.count()).where(item_t.c.thread_id == thread_id).scalar_subquery()
    columns = (
        literal(thread_id).label("id"),
        kept.c.tenant_id,
        _tenant_name(kept.c.tenant_id),
        literal(None, Text).label("title"),
        literal({}, JSONB).label("metadata"),
        items.label("item_count"),
        kept.c.response_count,
        kept.c.input_tokens,
        kept.c.output_tokens,
        kept.c.cost,
        kept.c.created_at,
        kept.c.updated_at,
        latest_row.c.model.label("last_model"),
        latest_row.c.status.label("last_status"),
        true().label("deleted"),
        literal("conversation").label("kind"),
    )
    return select(*columns).select_from(kept.join(latest_row, true())).where(kept.c.response_count > 0)


async def get_thread(conn: AsyncConnection, thread_id: str) -> Any:
    """The thread's listing row: the conversation (one its tenant deleted too, marked), else the chain, with
    that id, else the kept responses of a purged conversation."""
    conversation = select(*_CONVERSATION_COLUMNS, literal("conversation").label("kind")).where(
        conversation_t.c.id == thread_id, not_being_purged(conversation_t)
    )
    row = (await conn.execute(conversation)).first()
    if row is None:
        row = (await conn.execute(select(*_CHAIN_COLUMNS).where(chain_t.c.id == thread_id))).first()
    if row is None:
        row = (await conn.execute(_kept_responses_row(thread_id))).first()
    return row


async def thread_contents(conn: AsyncConnection, thread_id: str) -> tuple[int, int]:
    """How many responses and items the thread holds, all of them: a conversation's row counts its own turns,
    not the previous_response_id turns continuing them, which are of its thread too."""
    responses = select(func.count()).where(response_t.c.thread_id == thread_id).scalar_subquery()
    items = select(func.count()).where(item_t.c.thread_id == thread_id).scalar_subquery()
    row = (await conn.execute(select(responses, items))).one()
    return int(row[0]), int(row[1])


async def thread_responses(conn: AsyncConnection, thread_id: str, keyset: Keyset) -> list[Any]:
    """A page of the thread's responses, oldest first (a parent always before its children), from the
    (thread_id, created_at, id) index; `keyset.after` is the last row of the previous page."""
    r = response_t
    stmt = select(*_RESPONSE_COLUMNS).where(r.c.thread_id == thread_id)
    if keyset.after is not None:
        after_at, after_id = keyset.after
        stmt = stmt.where(tuple_(r.c.created_at, r.c.id) > tuple_(literal(after_at, r.c.created_at.type), after_id))
    stmt = stmt.order_by(r.c.created_at, r.c.id).limit(keyset.limit + 1)
    return list((await conn.execute(stmt)).all())


async def response_items(conn: AsyncConnection, response_ids: list[str]) -> list[Any]:
    """The input and output items of these responses, in each one's order."""
    i = item_t
    stmt = (
        select(i.c.id, i.c.response_id, i.c.is_output, i.c.status, i.c.body)
        .where(i.c.response_id == any_(cast(bindparam("ids", response_ids), ARRAY(Text))))
        .order_by(i.c.response_id, i.c.is_output, i.c.ordinal)
    )
    return list((await conn.execute(stmt)).all())


async def lock_chain(conn: AsyncConnection, chain_id: str) -> list[Any]:
    """Every response of the chain's thread, locked for the rest of the transaction: a turn that would build
    on one of them waits, then finds it gone. Empty when no such thread."""
    r = response_t
    stmt = select(r.c.id, r.c.status).where(r.c.thread_id == chain_id).with_for_update()
    return list((await conn.execute(stmt)).all())


# Plain turns continuing a response of the thread, which store nothing before they end (their notes: see
# service/db/models.py, RunningChainTurn). The notes are few (one per such turn in flight), so they are read
# whole and each joined to its response by primary key.
_THREAD_HAS_RUNNING_CHILD = text(
    """
    SELECT EXISTS (SELECT FROM running_chain_turn n JOIN response r ON r.id = n.previous_response_id
                   WHERE r.thread_id = :thread_id AND n.expires_at > now())
    """
)


async def thread_has_running_child(conn: AsyncConnection, thread_id: str) -> bool:
    """Whether a plain turn is running that continues a response of the thread: a chain's, or a conversation's
    (whose thread has no chain row to list it). Call with the thread's responses locked (lock_chain): a turn
    beginning on one of them meanwhile waits, then finds it gone."""
    return bool(await conn.scalar(_THREAD_HAS_RUNNING_CHILD, {"thread_id": thread_id}))


# The chains with pending turns, in the order of the partial index of pending turns (empty but for a moment after
# many turns of one chain finished together): only that index holds pending_chain_id.
_PENDING_CHAINS = text(
    "SELECT DISTINCT pending_chain_id FROM response WHERE pending_chain_id IS NOT NULL"
    " ORDER BY pending_chain_id LIMIT :limit"
)
_FOLD_PENDING = text(chain_totals.fold_pending("CAST(:thread_id AS text)"))
_CHAINS_PER_PASS = 100
_LOCK_CHAIN = text("SELECT id FROM response_chain WHERE id = :thread_id FOR NO KEY UPDATE")


async def fold_pending_of(conn: AsyncConnection, chain_id: str) -> None:
    """Add the chain's pending turns to its totals now, waiting for its row if another statement holds it: before
    one of them is deleted, which would leave nothing for a later finish or sweep to add. The row stays locked
    until this transaction ends; the fold's own SKIP LOCKED does not skip a lock of its own transaction."""
    await conn.execute(_LOCK_CHAIN, {"thread_id": chain_id})
    await conn.execute(_FOLD_PENDING, {"thread_id": chain_id})


async def fold_pending_totals(conn: AsyncConnection) -> int:
    """Add to their chains' totals the turns whose finish found the chain's row held and that no later finish
    added (service/threads/totals.py); returns how many chains. A chain whose row is held now is left to its next
    finish or the next pass. One statement per chain, each the same as a finish's own fold."""
    chains = [row[0] for row in await conn.execute(_PENDING_CHAINS, {"limit": _CHAINS_PER_PASS})]
    folded = 0
    for chain_id in chains:
        folded += len((await conn.execute(_FOLD_PENDING, {"thread_id": chain_id})).all())
    return folded
