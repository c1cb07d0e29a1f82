"""SQL for idempotency keys. A key row is scoped by (tenant_id, key); `locked_at` doubles as the token of the
request that holds it, so a request whose claim was taken over cannot overwrite the new holder's answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import LargeBinary

from service.db.models import conversation_table, idempotency_key_table, response_table
from service.errors import error_envelope
from service.responses.status import ANSWERED, RUNNING

key_t = idempotency_key_table

IN_PROGRESS = "in_progress"
COMPLETED = "completed"

# The headers of a turn's answer as its route sends them (tests/test_idempotency.py compares them).
_JSON_HEADERS = literal([["content-type", "application/json"]], JSONB)
_STREAM_HEADERS = literal(
    [["cache-control", "no-cache"], ["x-accel-buffering", "no"], ["content-type", "text/event-stream; charset=utf-8"]],
    JSONB,
)


def _seconds(name: str, value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, bindparam(name, value))


def _replayable_turns(keys: FromClause) -> Select[Any]:
    """The turn that a key's holder stored under the key, when it can stand as the key's answer, for each of
    `keys`. A holder killed after storing its turn and before completing its key leaves the key in_progress;
    running the request again would append the turn's items twice, or call the upstream (and charge) a second
    time. A streamed turn's answer is its event stream, whatever its end. A turn answered as one JSON body is
    replayed when answered (completed or incomplete): a failed one answered with an HTTP error whose status is
    not stored, and it appended nothing, so its key is freed and a retry runs it again."""
    response = response_table.c
    return (
        select(response.id, response.conversation_id, response.stream)
        .where(
            response.tenant_id == keys.c.tenant_id,
            response.idempotency_key == keys.c.key,
            response.created_at >= keys.c.locked_at,
            or_(response.status.in_(ANSWERED), and_(response.stream, response.status.not_in(RUNNING))),
        )
        .order_by(response.created_at.desc())
        .limit(1)
    )


def _past_held_until(keys: FromClause, stale_after_seconds: float) -> ColumnElement[bool]:
    held_until = func.coalesce(keys.c.held_until, keys.c.locked_at + _seconds("stale", stale_after_seconds))
    return held_until < func.now()


async def _complete_from_replayable_turns(
    conn: AsyncConnection, held: Callable[[FromClause], ColumnElement[bool]]
) -> int:
    """Complete the `held` in_progress keys whose turn can be their answer. It is read from that response at
    replay (service/idempotency/replay.py): its event stream for a streamed turn, else the response."""
    keys = key_t.alias("held")
    turn = _replayable_turns(keys).lateral("turn")
    found = (
        select(keys.c.tenant_id, keys.c.key, turn.c.id, turn.c.conversation_id, turn.c.stream)
        .select_from(keys.join(turn, true()))
        .where(held(keys), keys.c.state == IN_PROGRESS)
        .subquery("found")
    )
    stmt = (
        update(key_t)
        .where(key_t.c.tenant_id == found.c.tenant_id, key_t.c.key == found.c.key, key_t.c.state == IN_PROGRESS)
        .values(
            state=COMPLETED,
            status_code=200,
            headers=case((found.c.stream, _STREAM_HEADERS), else_=_JSON_HEADERS),
            body=b"",
            response_id=found.c.id,
            conversation_id=found.c.conversation_id,
            answer_response_id=found.c.id,
        )
    )
    return (await conn.execute(stmt)).rowcount


@dataclass(frozen=True)
class Holder:
    """The process that claims a key: its id, the deadline it sets (its TURN_LOCK_TTL, by when it must have
    answered unless it died) and how long the key is kept (IDEMPOTENCY_KEY_TTL)."""

    process: str
    stale_after_seconds: float
    keep_seconds: float

    def claimed(self) -> dict[str, Any]:
        """The columns of a key this process claims now (a new claim, or one taken over)."""
        return {
            "state": IN_PROGRESS,
            "locked_at": func.clock_timestamp(),
            "held_until": func.clock_timestamp() + _seconds("stale", self.stale_after_seconds),
            "holder_process": self.process,
            "expires_at": func.now() + _seconds("keep", self.keep_seconds),
        }


# What a taken-over key forgets of its earlier holder's answer.
_NO_ANSWER = {
    "status_code": None,
    "headers": None,
    "body": None,
    "body_zlib": None,
    "response_id": None,
    "conversation_id": None,
    "answer_response_id": None,
}


async def claim(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    key: str,
    fingerprint: bytes,
    method: str,
    path: str,
    holder: Holder,
) -> datetime | None:
    """Insert the key as in_progress and return its lock token; None when the key exists (an expired key not
    purged yet is taken over)."""
    claimed = holder.claimed()
    values = insert(key_t).values(
        tenant_id=tenant_id, key=key, fingerprint=fingerprint, method=method, path=path, **claimed
    )
    excluded = values.excluded
    stmt = values.on_conflict_do_update(
        index_elements=[key_t.c.tenant_id, key_t.c.key],
        set_={
            **{name: excluded[name] for name in ("fingerprint", "method", "path", *claimed)},
            **_NO_ANSWER,
            "created_at": func.now(),
        },
        where=key_t.c.expires_at < func.now(),
    ).returning(key_t.c.locked_at)
    token: datetime | None = await conn.scalar(stmt)
    return token


async def take_over_abandoned(
    conn: AsyncConnection, *, tenant_id: str, key: str, fingerprint: bytes, holder: Holder
) -> datetime | None:
    """Take over a key still in_progress, with the same fingerprint, past the deadline its holder set
    (`held_until`: its own TURN_LOCK_TTL), by when the holder must have finished unless it died; a key claimed
    before held_until existed is judged by this process's TTL. Not when its turn can be its answer: that key is
    completed from its turn (complete_held_past_deadline). The key names its `holder_process`: when the reaper
    takes that process for dead it frees the key (release_held_by), so a retry need not wait that long."""
    stmt = (
        update(key_t)
        .where(
            key_t.c.tenant_id == tenant_id,
            key_t.c.key == key,
            key_t.c.state == IN_PROGRESS,
            key_t.c.fingerprint == fingerprint,
            _past_held_until(key_t, holder.stale_after_seconds),
            ~_replayable_turns(key_t).exists(),
        )
        .values(
            **holder.claimed(),
            **_NO_ANSWER,
            created_at=func.now(),
        )
        .returning(key_t.c.locked_at)
    )
    token: datetime | None = await conn.scalar(stmt)
    return token


async def complete_held_past_deadline(
    conn: AsyncConnection, *, tenant_id: str, key: str, stale_after_seconds: float
) -> bool:
    """Complete a key held past its deadline whose turn can be its answer (its holder died before completing it)."""

    def held(keys: FromClause) -> ColumnElement[bool]:
        return and_(keys.c.tenant_id == tenant_id, keys.c.key == key, _past_held_until(keys, stale_after_seconds))

    return await _complete_from_replayable_turns(conn, held) > 0


async def get(conn: AsyncConnection, tenant_id: str, key: str, *, stale_after_seconds: float) -> Any:
    """The key's row, with `abandoned`: whether it is past the deadline its holder set (judged as
    take_over_abandoned judges it), so that a retry while its holder still runs costs no further statement."""
    abandoned = _past_held_until(key_t, stale_after_seconds).label("abandoned")
    stmt = select(key_t, abandoned).where(key_t.c.tenant_id == tenant_id, key_t.c.key == key)
    return (await conn.execute(stmt)).first()


async def store_answer(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    key: str,
    token: datetime,
    status_code: int,
    headers: list[list[str]],
    body: bytes,
    packed: bool,
    response_id: str | None,
    conversation_id: str | None,
    answer_response_id: str | None = None,
) -> bool:
    """Complete the key with the answer to replay (`packed`: frames packed as a stored event log is, kept in
    body_zlib). The links are kept only to rows that exist (a store=false response has none), so that deleting
    them cascades to this row. `answer_response_id`: the response the answer is read from at replay (its event
    stream, or its outcome once stored), which may not be stored yet."""
    existing_response = select(response_table.c.id).where(response_table.c.id == response_id).scalar_subquery()
    existing_conversation = (
        select(conversation_table.c.id).where(conversation_table.c.id == conversation_id).scalar_subquery()
    )
    stmt = (
        update(key_t)
        .where(key_t.c.tenant_id == tenant_id, key_t.c.key == key, key_t.c.locked_at == token)
        .values(
            state=COMPLETED,
            status_code=status_code,
            headers=headers,
            body=None if packed else body,
            body_zlib=body if packed else None,
            response_id=existing_response if response_id else None,
            conversation_id=existing_conversation if conversation_id else None,
            answer_response_id=answer_response_id,
        )
        .returning(key_t.c.key)
    )
    return (await conn.execute(stmt)).first() is not None


async def settle_deferred_answer(
    conn: AsyncConnection, *, tenant_id: str, key: str, response_id: str, status_code: int, body: bytes
) -> None:
    """Replace an answer given while the turn's outcome waited for the database by the stored response."""
    await conn.execute(
        update(key_t)
        .where(key_t.c.tenant_id == tenant_id, key_t.c.key == key, key_t.c.answer_response_id == response_id)
        .values(
            status_code=status_code,
            headers=[["content-type", "application/json"]],
            body=body,
            body_zlib=None,
            response_id=select(response_table.c.id).where(response_table.c.id == response_id).scalar_subquery(),
            answer_response_id=None,
        )
    )


async def release(conn: AsyncConnection, *, tenant_id: str, key: str, token: datetime) -> None:
    """Forget a key whose request had no effect, so that a retry with it runs afresh."""
    await conn.execute(
        delete(key_t).where(
            key_t.c.tenant_id == tenant_id,
            key_t.c.key == key,
            key_t.c.locked_at == token,
            key_t.c.state == IN_PROGRESS,
        )
    )


async def release_held_by(conn: AsyncConnection, process_ids: list[str]) -> int:
    """Forget the in_progress keys of processes taken for dead, so that a retry with one runs at once rather than
    after the key's held_until; a key whose turn can be its answer is completed instead, so that a retry replays it.
    Run only in the pass that finds those processes dead (a scan of the keys)."""
    if not process_ids:
        return 0
    await _complete_from_replayable_turns(conn, lambda keys: keys.c.holder_process.in_(process_ids))
    stmt = delete(key_t).where(key_t.c.state == IN_PROGRESS, key_t.c.holder_process.in_(process_ids))
    return (await conn.execute(stmt)).rowcount


async def purge_expired(conn: AsyncConnection, limit: int) -> int:
    """Delete up to `limit` expired keys (bounded, so one pass never holds a long transaction)."""
    victims = (
        select(key_t.c.tenant_id, key_t.c.key)
        .where(key_t.c.expires_at < func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("victims")
    )
    stmt = (
        delete(key_t)
        .where(key_t.c.tenant_id == victims.c.tenant_id, key_t.c.key == victims.c.key)
        .returning(key_t.c.key)
    )
    return len((await conn.execute(stmt)).all())


def _not_found_answer(message: str) -> bytes:
    return msgspec.json.encode(error_envelope(message, "invalid_request_error", None, "not_found"))


# The headers of the 404 a key answers once what it made was deleted.
NOT_FOUND_HEADERS = [["content-type", "application/json"]]


def _answering_404(message: str) -> dict[str, Any]:
    """What a key holds once what it made was deleted: the 404 a read of it gives now, none of its content."""
    return {"status_code": 404, "headers": NOT_FOUND_HEADERS, "body": _not_found_answer(message), "body_zlib": None}


async def forget_deleted_conversation(conn: AsyncConnection, tenant_id: str, conversation_id: str) -> None:
    """A deleted conversation is not replayed, as a deleted response is not: the keys of the requests that made
    it or added to it (create, import, fork, items) answer the 404 a read of it gives now, holding none of its
    content. The key stays used, so a retry does not create the conversation again; no longer linked to it, the
    key is left by its delete and goes after IDEMPOTENCY_KEY_TTL. A turn's key names its response, which stays."""
    await conn.execute(
        update(key_t)
        .where(
            key_t.c.tenant_id == tenant_id,
            key_t.c.conversation_id == conversation_id,
            key_t.c.response_id.is_(None),
            key_t.c.state == COMPLETED,
        )
        .values(**_answering_404(f"Conversation with id '{conversation_id}' not found."), conversation_id=None)
    )


async def forget_deleted_item(conn: AsyncConnection, tenant_id: str, conversation_id: str, item_id: str) -> None:
    """An item deleted from a conversation is not replayed: the answer of the request that added it (which lists
    the items it added) becomes the 404 a read of the item gives now. The key stays used, so a retry does not add
    the item again."""
    shown_id = msgspec.json.encode({"id": item_id})[1:-1]  # `"id":"<id>"`, as every answer encodes it
    await conn.execute(
        update(key_t)
        .where(
            key_t.c.tenant_id == tenant_id,
            key_t.c.conversation_id == conversation_id,
            key_t.c.state == COMPLETED,
            key_t.c.method == "POST",
            key_t.c.path == f"/v1/conversations/{conversation_id}/items",
            func.position(literal(shown_id, LargeBinary).op("IN")(key_t.c.body)) > 0,
        )
        .values(**_answering_404(f"Item with id '{item_id}' not found in conversation '{conversation_id}'."))
    )


def _deleted_response_message(response_id: str) -> str:
    return f"Response with id '{response_id}' not found."


# What a key answers once its response was deleted, with `{response_id}` for retention's statement to fill in (a
# response id is the service's own: nothing in it to escape).
DELETED_RESPONSE_ANSWER = _not_found_answer(_deleted_response_message("{response_id}")).decode()


async def forget_deleted_response(conn: AsyncConnection, tenant_id: str, response_id: str) -> None:
    """A deleted response is not replayed: its key keeps answering, but with the 404 a read of it gives now
    (the key stays used, so a retry does not run the turn, and charge for it, a second time). The key no longer
    links to the response, so that the response's delete leaves it; it goes after IDEMPOTENCY_KEY_TTL. Retention
    does the same for the responses it deletes."""
    await conn.execute(
        update(key_t)
        .where(
            key_t.c.tenant_id == tenant_id,
            or_(key_t.c.response_id == response_id, key_t.c.answer_response_id == response_id),
            key_t.c.state == COMPLETED,
        )
        .values(**_answering_404(_deleted_response_message(response_id)), response_id=None, answer_response_id=None)
    )
