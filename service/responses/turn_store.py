"""The turn loop's hot statements, sent on the driver (asyncpg) connection.

A turn's begin and finish are each one statement: data-modifying CTEs make every part of a step commit or
fail together without BEGIN/COMMIT round trips, and asyncpg keeps each statement prepared. The history comes
back as one text (the stored item JSON texts joined by commas), ready to splice into the upstream body.
Everything else (listings, admin, items) uses SQLAlchemy; these few statements run thousands of times a
second, so they are written once here, by hand. docs/benchmarks.md has the measured difference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from service.items import NewItem
from service.responses.history_cache import CachedHistory, joined
from service.responses.repository import RUNNING_STATUSES

# The item columns a turn writes, as parallel arrays for unnest(): one statement inserts any number of items.
_ITEM_ARRAYS = (
    "unnest($ids::text[], $types::text[], $roles::text[], $statuses::text[], $bodies::text[], $texts::text[])"
)


def _numbered(sql: str, names: Sequence[str]) -> str:
    """asyncpg takes $1..$n; the statements below name their parameters, in the order `names` gives."""
    for index, name in sorted(enumerate(names, 1), key=lambda pair: -len(pair[1])):
        if f"${name}" not in sql:
            raise ValueError(f"parameter ${name} is not used")
        sql = sql.replace(f"${name}", f"${index}")
    if re.search(r"\$[a-z]", sql):
        raise ValueError(f"unnamed parameter left in {sql}")
    return sql


def _item_arrays(items: Sequence[NewItem]) -> list[list[Any]]:
    return [
        [i.id for i in items],
        [i.type for i in items],
        [i.role for i in items],
        [i.status for i in items],
        [i.body for i in items],
        [i.text_content for i in items],
    ]


_ITEM_PARAMS = ("ids", "types", "roles", "statuses", "bodies", "texts")
_RESPONSE_PARAMS = (
    "response_id",
    "tenant_id",
    "conversation_id",
    "previous_response_id",
    "status",
    "model",
    "instructions",
    "params_json",
    "metadata",
    "background",
    "stream",
)

# The history of a conversation, in order, as one text. Aggregating an ordered subquery keeps its order (an
# ORDER BY inside string_agg would sort again, on disk for long histories on PostgreSQL 15).
_HISTORY = "SELECT string_agg(body, ',') FROM (SELECT body FROM item WHERE conversation_id = $1 ORDER BY position) h"


def _insert_inputs(source: str) -> str:
    """Insert input items outside any conversation; `source` is a CTE to select from with them, or ""."""
    return f"""
    INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, type, role, status, body, text_content)
    SELECT u.id, $tenant_id, $response_id, false, u.ordinal - 1, u.type, u.role, u.status, u.body, u.text_content
    FROM {source} {_ITEM_ARRAYS} WITH ORDINALITY AS u(id, type, role, status, body, text_content, ordinal)
"""


# A conversation turn the client cannot see before its finish (not streamed, not background: the client learns
# the response id from the finished response) begins lighter: its begin stores nothing but the claim, and its
# finish stores its response row, input items and outcome together. A turn the client may see at once stores
# the response and its input items in its begin, and its finish updates the one and moves the others.
# - Nothing can look for that response in between: its id is in no answer yet. An in-progress response row
#   would cost every turn a row version and an entry in each of the response table's seven indexes, written at
#   the begin and again when the finish changes its (indexed) status and model: ~15% of PostgreSQL's CPU per
#   turn (docs/benchmarks.md). The admin listing shows a claimed thread whose response is not stored yet as
#   in_progress (service/admin/repository.py).
# - Its input items are written once, at their place in the conversation, not written outside it and then
#   moved (an UPDATE is a second row version with an entry in each of the item table's six indexes).
# - Its begin does not wait for the write-ahead log to reach the disk: the finish's commit flushes the log up
#   to itself, begin included, before the client hears of the response (set_config(..., true) lasts until the
#   statement's transaction ends). This saves a WAL flush per turn.
# If PostgreSQL crashes, or the process dies, between the two, the turn fails, as every turn in flight then
# does, and nothing the client was told about is missing: the claim expires and the reaper releases it (there
# is no response row to fail).
def visible_before_finish(*, stream: bool, background: bool) -> bool:
    return stream or background


# Claim the conversation (one writer at a time), store the response as in_progress with its input items when
# the turn is visible before its finish ({stored}), and read the history, in one statement. The claim locks
# the conversation row; an expired claim is taken over and its holder reported. The history is read from the
# statement's snapshot, which a turn that finished while we waited for the lock is not in: `history_is_current`
# compares the row the snapshot saw with the row we claimed (every change to a conversation's items moves
# next_position or item_count), and the caller reads the history again when they differ. Only the items from
# $history_from on are read: the caller holds the ones before (service/responses/history_cache.py), 0 when it
# holds none. The claim writes no indexed column, so PostgreSQL can make it a HOT update, with no new entries
# in the conversation's eight indexes: last_model and last_status are the last finished turn's, written by the
# finish, and the admin listing shows a claimed thread's status from the claiming turn.
_CLAIM_AND_BEGIN_TEMPLATE = """
    WITH claim AS (
        UPDATE conversation AS c
        SET turn_response_id = $response_id,
            turn_expires_at = now() + make_interval(secs => $ttl)
        FROM (SELECT id, turn_response_id FROM conversation
              WHERE id = $conversation_id AND tenant_id = $tenant_id FOR UPDATE) AS before
        WHERE c.id = before.id AND (c.turn_response_id IS NULL OR c.turn_expires_at <= now())
        RETURNING c.next_position, c.item_count, before.turn_response_id AS previous_holder
    ),
    {stored}
    SELECT claim.next_position, claim.item_count, claim.previous_holder, stored.created_at,
           snapshot.is_current AS history_is_current, tail.history, tail.item_count AS tail_count
    FROM claim, stored, LATERAL (
        SELECT (claim.next_position, claim.item_count) =
               (SELECT next_position, item_count FROM conversation WHERE id = $conversation_id) AS is_current
    ) AS snapshot, LATERAL (
        SELECT string_agg(body, ',') AS history, count(*) AS item_count FROM (
            SELECT body FROM item
            WHERE snapshot.is_current AND conversation_id = $conversation_id AND position >= $history_from
            ORDER BY position
        ) h
    ) AS tail
"""
_STORE_IN_PROGRESS = f"""stored AS (
        INSERT INTO response (id, tenant_id, conversation_id, conversation_position, previous_response_id, status,
                              model, instructions, params_json, metadata, background, stream)
        SELECT $response_id, $tenant_id, $conversation_id, claim.next_position, $previous_response_id, $status,
               $model, $instructions, $params_json, $metadata::jsonb, $background, $stream
        FROM claim
        RETURNING created_at
    ),
    inputs AS ({_insert_inputs("claim,")})"""
# The claim alone: the statement's time stands for the response's creation, which the finish stores.
_STORE_NOTHING = """stored AS (SELECT now() AS created_at, set_config('synchronous_commit', 'off', true))"""
_CLAIM_PARAMS = ("ttl", "response_id", "conversation_id", "tenant_id", "history_from")
_CLAIM_AND_BEGIN = _numbered(
    _CLAIM_AND_BEGIN_TEMPLATE.format(stored=_STORE_IN_PROGRESS),
    ("ttl", *_RESPONSE_PARAMS, "history_from", *_ITEM_PARAMS),
)
_CLAIM_ONLY = _numbered(_CLAIM_AND_BEGIN_TEMPLATE.format(stored=_STORE_NOTHING), _CLAIM_PARAMS)

# A turn outside a conversation: the response and its input items, in one statement. Its input items stay
# where they are stored (no conversation takes them), and nothing of it is worth leaving to its finish: a begin
# that fails here (the response it continues deleted, the database down) fails before the upstream call. One
# that no client sees before its finish does not wait for the disk ({lazy_commit}, as _STORE_NOTHING).
_BEGIN_TEMPLATE = f"""
    WITH stored AS (
        INSERT INTO response (id, tenant_id, conversation_id, previous_response_id, status, model, instructions,
                              params_json, metadata, background, stream)
        VALUES ($response_id, $tenant_id, $conversation_id, $previous_response_id, $status, $model, $instructions,
                $params_json, $metadata::jsonb, $background, $stream)
        RETURNING created_at{{lazy_commit}}
    ),
    inputs AS ({_insert_inputs("")})
    SELECT created_at FROM stored
"""
_BEGIN = {
    visible: _numbered(
        _BEGIN_TEMPLATE.replace("{lazy_commit}", "" if visible else ", set_config('synchronous_commit', 'off', true)"),
        (*_RESPONSE_PARAMS, *_ITEM_PARAMS),
    )
    for visible in (True, False)
}

_OUTCOME_PARAMS = (
    "response_id",
    "tenant_id",
    "status",
    "upstream_id",
    "upstream_model",
    "usage",
    "error",
    "incomplete_details",
    "input_tokens",
    "output_tokens",
    "cost",
    "completed_at",
)
_COMPLETE_RESPONSE = """
    UPDATE response SET status = $status, upstream_id = $upstream_id, upstream_model = $upstream_model,
        usage = $usage::jsonb, error = $error::jsonb, incomplete_details = $incomplete_details::jsonb,
        input_tokens = $input_tokens, output_tokens = $output_tokens, cost = $cost, completed_at = $completed_at
"""
# A streamed response's event log, written by the statement that stores its outcome: the stored response and
# its log never disagree, and a resume after the end always finds the log. A finish without a log has no such
# part ({log}): it would open the log table and its index for nothing, every turn.
_EVENT_LOG_PARAMS = ("events", "event_count")
_SAVE_EVENT_LOG = """,
    logged AS (
        INSERT INTO response_event_log (response_id, events, event_count)
        SELECT $response_id, $events::text, $event_count::int FROM completed
        ON CONFLICT (response_id) DO UPDATE SET events = excluded.events, event_count = excluded.event_count
    )"""

# The items a finish stores, in one INSERT: the output items, after the input items when the begin did not
# store those (the first $new_inputs of the arrays' items are inputs: 0, or $input_count). One INSERT rather
# than one per kind opens the item table's indexes once, and stores the items in conversation order.
_NEW_ITEM_IS_OUTPUT = "u.ordinal > $new_inputs"
_NEW_ITEM_ORDINAL = "CASE WHEN u.ordinal > $new_inputs THEN u.ordinal - $new_inputs ELSE u.ordinal END - 1"
_NEW_ITEMS = f"{_ITEM_ARRAYS} WITH ORDINALITY AS u(id, type, role, status, body, text_content, ordinal)"

# The response row of a conversation turn no client saw before its finish, stored whole by the finish (such a
# turn continues no previous response: `conversation` and `previous_response_id` exclude each other).
_ROW_PARAMS = ("model", "instructions", "params_json", "metadata", "background", "stream")


def _insert_response(conversation: str, position: str, source: str) -> str:
    return f"""
    INSERT INTO response (id, tenant_id, conversation_id, conversation_position, status, model, instructions,
                          params_json, metadata, background, stream, created_at, upstream_id, upstream_model, usage,
                          error, incomplete_details, input_tokens, output_tokens, cost, completed_at)
    SELECT $response_id, $tenant_id, {conversation}, {position}, $status, $model, $instructions, $params_json,
           $metadata::jsonb, $background, $stream, $created_at, $upstream_id, $upstream_model, $usage::jsonb,
           $error::jsonb, $incomplete_details::jsonb, $input_tokens, $output_tokens, $cost, $completed_at
    {source}"""


# Finish a conversation turn while it still holds the claim: reserve positions at the end of the conversation
# and append the inputs and outputs there (or, with $append false, only release the claim), store the new
# items, the outcome and the event log, and free the claim. No row when the claim was lost (it expired and was
# taken over). {attach} moves the input items the begin stored to their place; {completed} stores the outcome.
_FINISH_IN_CONVERSATION_TEMPLATE = f"""
    WITH advanced AS (
        UPDATE conversation
        SET next_position = next_position + $added, item_count = item_count + $added, updated_at = now(),
            title = coalesce(title, $title), turn_response_id = NULL, turn_expires_at = NULL,
            response_count = response_count + 1, input_tokens = input_tokens + $input_tokens,
            output_tokens = output_tokens + $output_tokens, cost = cost + $cost,
            last_model = $last_model, last_status = $status
        WHERE id = $conversation_id AND turn_response_id = $response_id
        RETURNING next_position - $added AS start
    ),{{attach}}
    items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, type, role,
                          status, body, text_content)
        SELECT u.id, $tenant_id, $response_id, {_NEW_ITEM_IS_OUTPUT}, {_NEW_ITEM_ORDINAL},
               CASE WHEN $append THEN $conversation_id END,
               CASE WHEN $append THEN advanced.start + $input_count - $new_inputs + u.ordinal - 1 END,
               u.type, u.role, u.status, u.body, u.text_content
        FROM advanced, {_NEW_ITEMS}
    ),
    completed AS ({{completed}}){{log}}
    SELECT completed_at FROM completed
"""
_ATTACH_STORED_INPUTS = """
    attached AS (
        UPDATE item SET conversation_id = $conversation_id, position = advanced.start + item.ordinal
        FROM advanced
        WHERE $append AND item.response_id = $response_id AND item.is_output = false
    ),"""
_FINISH_IN_CONVERSATION_PARAMS = (
    *_OUTCOME_PARAMS,
    "conversation_id",
    "added",
    "title",
    "last_model",
    "append",
    "input_count",
    "new_inputs",
    *_ITEM_PARAMS,
)

# Finish a turn outside a conversation (or one whose claim was lost): its new items and outcome. A response
# stored whole here (a conversation turn's whose claim was lost) names its conversation only if that still
# exists: it may have been deleted once the claim expired.
_FINISH_TEMPLATE = f"""
    WITH items AS (
        INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, type, role, status, body, text_content)
        SELECT u.id, $tenant_id, $response_id, {_NEW_ITEM_IS_OUTPUT}, {_NEW_ITEM_ORDINAL},
               u.type, u.role, u.status, u.body, u.text_content
        FROM {_NEW_ITEMS}
    ),
    completed AS ({{completed}}){{log}}
    SELECT completed_at FROM completed
"""
_FINISH_PARAMS = (*_OUTCOME_PARAMS, "new_inputs", *_ITEM_PARAMS)


def _finish_statement(*, in_conversation: bool, visible: bool, log: bool = False) -> str:
    """A finish statement. A turn `visible` before its finish has its response row and input items stored by
    its begin: its finish updates the row (and moves the items, in a conversation), and may store an event log
    (`log`, its parameters last). Otherwise the finish stores the row, its parameters last."""
    template, names = (
        (_FINISH_IN_CONVERSATION_TEMPLATE, _FINISH_IN_CONVERSATION_PARAMS)
        if in_conversation
        else (_FINISH_TEMPLATE, _FINISH_PARAMS)
    )
    if visible:
        where = "FROM advanced WHERE response.id = $response_id" if in_conversation else "WHERE id = $response_id"
        completed = f"{_COMPLETE_RESPONSE} {where} RETURNING completed_at"
        names = (*names, *_EVENT_LOG_PARAMS) if log else names
    elif in_conversation:
        completed = _insert_response("$conversation_id", "advanced.start", "FROM advanced RETURNING completed_at")
        names = (*names, *_ROW_PARAMS, "created_at")
    else:
        conversation = "(SELECT id FROM conversation WHERE id = $conversation_id)"
        completed = _insert_response(conversation, "$conversation_position", "RETURNING completed_at")
        names = (*names, *_ROW_PARAMS, "created_at", "conversation_id", "conversation_position")
    sql = template.replace("{attach}", _ATTACH_STORED_INPUTS if visible and in_conversation else "")
    sql = sql.replace("{completed}", completed).replace("{log}", _SAVE_EVENT_LOG if log else "")
    return _numbered(sql, names)


# By the turn's kind (_finish_kind): in its conversation, or outside any (or after a lost claim).
_FINISH_IN_CONVERSATION = {
    "logged": _finish_statement(in_conversation=True, visible=True, log=True),
    "visible": _finish_statement(in_conversation=True, visible=True),
    "unseen": _finish_statement(in_conversation=True, visible=False),
}
_FINISH = {
    "logged": _finish_statement(in_conversation=False, visible=True, log=True),
    "visible": _finish_statement(in_conversation=False, visible=True),
    "unseen": _finish_statement(in_conversation=False, visible=False),
}

_FINISHED_AT = "SELECT completed_at = $2 FROM response WHERE id = $1"

_FAIL_RUNNING = """
    UPDATE response SET status = 'failed', error = $2::jsonb, completed_at = now()
    WHERE id = $1 AND status = ANY($3::text[])
"""


def json_text(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


@dataclass(frozen=True)
class NewResponse:
    """The response row a turn starts with."""

    response_id: str
    tenant_id: str
    conversation_id: str | None
    previous_response_id: str | None
    status: str
    model: str
    instructions: str | None
    params_json: str
    metadata: dict[str, str]
    background: bool
    stream: bool

    @property
    def visible_before_finish(self) -> bool:
        return visible_before_finish(stream=self.stream, background=self.background)

    def values(self) -> list[Any]:
        """The values of _RESPONSE_PARAMS."""
        return [
            self.response_id,
            self.tenant_id,
            self.conversation_id,
            self.previous_response_id,
            self.status,
            *self.row_values(),
        ]

    def row_values(self) -> list[Any]:
        """The values of _ROW_PARAMS, the last of _RESPONSE_PARAMS."""
        return [
            self.model,
            self.instructions,
            self.params_json,
            json_text(self.metadata),
            self.background,
            self.stream,
        ]


@dataclass(frozen=True)
class Claimed:
    previous_holder: str | None
    created_at: datetime
    position: int  # where the turn's items go in the conversation (its next_position when claimed)
    # The conversation's item texts joined by commas ("" for an empty one), as of `as_of` (its next_position
    # and item_count when claimed); as_of is None when the history had to be read after the claim, when
    # another writer may have added to it.
    history: str
    as_of: CachedHistory | None


async def claim_and_begin(
    db: Any, response: NewResponse, inputs: Sequence[NewItem], *, ttl_seconds: float, known: CachedHistory | None
) -> Claimed | None:
    """None when the conversation is missing, not the tenant's, or claimed by a live turn (nothing written).
    `known` is an earlier state of the conversation's history: only the items after it are read. The response
    and its `inputs` are stored only when the response is visible before its finish; otherwise the finish
    stores them."""
    history_from = 0 if known is None else known.next_position
    if response.visible_before_finish:
        values = [ttl_seconds, *response.values(), history_from, *_item_arrays(inputs)]
        row = await db.fetchrow(_CLAIM_AND_BEGIN, *values)
    else:
        values = [ttl_seconds, response.response_id, response.conversation_id, response.tenant_id, history_from]
        row = await db.fetchrow(_CLAIM_ONLY, *values)
    if row is None:
        return None
    tail = row["history"] or ""
    # Read again, the history is from a later snapshot than the claim's counts: it is not given as of them.
    # `known` is dropped when an item before its end was deleted since.
    if not row["history_is_current"] or (known and known.item_count + row["tail_count"] != row["item_count"]):
        history = await conversation_history(db, response.conversation_id)
        return Claimed(row["previous_holder"], row["created_at"], row["next_position"], history, None)
    history = tail if known is None else joined(known.text, tail)
    as_of = CachedHistory(row["next_position"], row["item_count"], history)
    return Claimed(row["previous_holder"], row["created_at"], row["next_position"], history, as_of)


async def begin(db: Any, response: NewResponse, inputs: Sequence[NewItem]) -> datetime:
    """Store a response outside any conversation, in progress, with its input items."""
    statement = _BEGIN[response.visible_before_finish]
    created_at: datetime = await db.fetchval(statement, *response.values(), *_item_arrays(inputs))
    return created_at


async def conversation_history(db: Any, conversation_id: str | None) -> str:
    return await db.fetchval(_HISTORY, conversation_id) or ""


@dataclass(frozen=True)
class Outcome:
    """What a finished turn stores on its response."""

    response_id: str
    tenant_id: str
    status: str
    upstream_id: str | None
    upstream_model: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    completed_at: datetime

    def values(self) -> list[Any]:
        return [
            self.response_id,
            self.tenant_id,
            self.status,
            self.upstream_id,
            self.upstream_model,
            json_text(self.usage),
            json_text(self.error),
            json_text(self.incomplete_details),
            self.input_tokens,
            self.output_tokens,
            self.cost,
            self.completed_at,
        ]


@dataclass(frozen=True)
class EventLog:
    """A streamed response's events as stored: its SSE frames, terminal one included."""

    events: str
    event_count: int


@dataclass(frozen=True)
class Appended:
    """How a conversation turn ends in its conversation."""

    conversation_id: str
    append: bool  # false: the turn failed or was cancelled, so only the claim is released
    input_count: int
    title: str | None
    last_model: str | None


@dataclass(frozen=True)
class Unseen:
    """What the finish of a conversation turn no client saw before its end stores besides its outcome and
    output items: the response row and the input items, which its begin did not store."""

    response: NewResponse
    created_at: datetime
    conversation_position: int  # where the conversation's claim placed it
    inputs: Sequence[NewItem]


async def finish_in_conversation(
    db: Any,
    outcome: Outcome,
    appended: Appended,
    outputs: Sequence[NewItem],
    log: EventLog | None = None,
    *,
    unseen: Unseen | None = None,
) -> bool:
    """False when the turn no longer holds its claim (nothing written). `unseen`: the response row and input
    items to store, when the begin did not store them (such a turn has no event log)."""
    added = appended.input_count + len(outputs) if appended.append else 0
    kind, last = _finish_kind(log, unseen)
    completed_at: datetime | None = await db.fetchval(
        _FINISH_IN_CONVERSATION[kind],
        *outcome.values(),
        appended.conversation_id,
        added,
        appended.title,
        appended.last_model,
        appended.append,
        appended.input_count,
        *_new_items(unseen, outputs),
        *last,
    )
    return completed_at is not None


async def finish(
    db: Any,
    outcome: Outcome,
    outputs: Sequence[NewItem],
    log: EventLog | None = None,
    *,
    unseen: Unseen | None = None,
) -> None:
    """Outside any conversation, or after a lost claim (the items then stay outside the conversation).
    `unseen`: as for finish_in_conversation."""
    kind, last = _finish_kind(log, unseen)
    if unseen is not None:
        last += [unseen.response.conversation_id, unseen.conversation_position]
    await db.execute(_FINISH[kind], *outcome.values(), *_new_items(unseen, outputs), *last)


def _finish_kind(log: EventLog | None, unseen: Unseen | None) -> tuple[str, list[Any]]:
    """Which finish statement stores the turn, and the values of the parameters it has last."""
    if unseen is not None:
        if log is not None:
            raise ValueError("only a streamed turn has an event log, and it is visible before its finish")
        return "unseen", [*unseen.response.row_values(), unseen.created_at]
    if log is not None:
        return "logged", [log.events, log.event_count]
    return "visible", []


def _new_items(unseen: Unseen | None, outputs: Sequence[NewItem]) -> list[Any]:
    """$new_inputs and the item arrays of a finish."""
    if unseen is None:
        return [0, *_item_arrays(outputs)]
    return [len(unseen.inputs), *_item_arrays([*unseen.inputs, *outputs])]


async def finished_at(db: Any, response_id: str, completed_at: datetime) -> bool:
    """Whether the response is stored as finished at exactly `completed_at` (each turn computes its own once)."""
    return bool(await db.fetchval(_FINISHED_AT, response_id, completed_at))


async def fail_running_response(db: Any, response_id: str, error: dict[str, Any]) -> None:
    await db.execute(_FAIL_RUNNING, response_id, json_text(error), list(RUNNING_STATUSES))
