"""Idempotency keys: claim a key for a request, replay a finished request's answer, store or forget the answer.
Each step is one short transaction; nothing is held while the request itself runs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import repository as processes
from service.db.retry import Later
from service.errors import Conflict, Unprocessable
from service.idempotency import repository
from service.responses.frame_log import inflated

logger = logging.getLogger("service.idempotency")

_STORE_ATTEMPTS = 3
# As long as a turn's outcome is kept for the database (service/responses/turn.py), so that its key is too.
_LATER_SECONDS = 600
PURGE_BATCH = 1000
_UNPACK_PIECE = 1 << 20


@dataclass(frozen=True)
class KeyedRequest:
    tenant_id: str
    key: str
    method: str
    path: str
    fingerprint: bytes


@dataclass(frozen=True)
class Claim:
    """This request owns the key; `token` proves it when the answer is stored."""

    request: KeyedRequest
    token: datetime


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    headers: list[list[str]]
    body: bytes  # as sent, or packed (frame_log.inflated reads it)
    # Set when the answer is read from this response at replay (service/idempotency/replay.py).
    answer_response_id: str | None = None
    response_id: str | None = None  # the stored response the request created, if any (for its log line)
    packed: bool = False


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: list[list[str]]
    body: bytes
    response_id: str | None
    conversation_id: str | None
    answer_response_id: str | None = None
    # `body` is a stream's frames packed as a stored event log is (service/responses/frame_log.py): a store=false
    # stream's answer, which nothing else keeps, and which may be as long as the answer the model gave.
    packed: bool = False


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """SHA-256 of the route and the body, with JSON bodies in canonical form (sorted keys, no spacing), so a
    client that re-serializes the same request matches."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except (msgspec.MsgspecError, UnicodeError, ValueError, TypeError, RecursionError):
        canonical = body  # the route answers 400 for such a body; its key is then released
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).digest()


def _in_use(key: str) -> Conflict:
    return Conflict(
        f"A request with Idempotency-Key '{key}' is still being processed. Retry once it has finished.",
        code="idempotency_key_in_use",
        headers={"Retry-After": "1"},
    )


def _mismatch(key: str) -> Unprocessable:
    return Unprocessable(
        f"Idempotency-Key '{key}' was already used with a different request (another route or body). "
        "Use a new key for a new request.",
        code="idempotency_key_mismatch",
    )


async def begin(
    engine: AsyncEngine,
    request: KeyedRequest,
    *,
    keep_seconds: float,
    stale_after_seconds: float,
    holder_process: str,
) -> Claim | StoredAnswer:
    """Claim the key for this request, or return the stored answer of the request that used it first.
    Raises 409 while that request still runs, 422 when the key came with a different request."""
    holder = repository.Holder(holder_process, stale_after_seconds, keep_seconds)
    tenant_id, key, fingerprint = request.tenant_id, request.key, request.fingerprint
    for _ in range(3):
        async with engine.begin() as conn:
            token = await repository.claim(
                conn,
                tenant_id=tenant_id,
                key=key,
                fingerprint=fingerprint,
                method=request.method,
                path=request.path,
                holder=holder,
            )
            if token is not None:
                return Claim(request, token)
            row = await repository.get(conn, tenant_id, key, stale_after_seconds=stale_after_seconds)
            if (
                row is not None
                and row.abandoned
                and row.state != repository.COMPLETED
                and bytes(row.fingerprint) == fingerprint
            ):
                # Held past its holder's deadline, the holder died: its stored turn is the answer, else this
                # request runs it again.
                token = await repository.take_over_abandoned(
                    conn, tenant_id=tenant_id, key=key, fingerprint=fingerprint, holder=holder
                )
                if token is not None:
                    return Claim(request, token)
                if await repository.complete_held_past_deadline(
                    conn, tenant_id=tenant_id, key=key, stale_after_seconds=stale_after_seconds
                ):
                    row = await repository.get(conn, tenant_id, key, stale_after_seconds=stale_after_seconds)
        if row is None:
            continue  # released between our two statements: claim again
        if bytes(row.fingerprint) != request.fingerprint:
            raise _mismatch(request.key)
        if row.state != repository.COMPLETED:
            raise _in_use(request.key)
        packed = row.body_zlib is not None
        return StoredAnswer(
            row.status_code,
            list(row.headers or []),
            bytes(row.body_zlib if packed else row.body or b""),
            row.answer_response_id,
            row.response_id,
            packed,
        )
    raise _in_use(request.key)


class AnswerStore:
    """Completes keys with their answers, or releases them: best effort, never raising (the client gets its
    answer anyway). A write the database could not take is kept and made once it is back; meanwhile the key stays
    in_progress (retries get 409): once stored, they get the answer, rather than a second run once its holder's
    deadline has passed. The application owns one and closes it at shutdown."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._later = Later(
            seconds=_LATER_SECONDS,
            max_delay=5.0,
            fallback="the key is taken over once its holder's deadline has passed",
            log=logger,
        )

    async def store_answer(self, claim: Claim, answer: Answer) -> None:
        async def work(conn: Any) -> None:
            body, packed = answer.body, answer.packed
            if packed and await processes.older_release_alive(conn):
                # Mid-upgrade: a process of the release before reads `body` only, and would replay this answer
                # as a stream without an event.
                body, packed = b"".join(inflated(body, _UNPACK_PIECE)), False
            stored = await repository.store_answer(
                conn,
                tenant_id=claim.request.tenant_id,
                key=claim.request.key,
                token=claim.token,
                status_code=answer.status_code,
                headers=answer.headers,
                body=body,
                packed=packed,
                response_id=answer.response_id,
                conversation_id=answer.conversation_id,
                answer_response_id=answer.answer_response_id,
            )
            if not stored:
                logger.warning("idempotency key was taken over before its answer was stored")

        await self._write("storing the answer of an idempotency key", work)

    async def release(self, claim: Claim) -> None:
        async def work(conn: Any) -> None:
            await repository.release(conn, tenant_id=claim.request.tenant_id, key=claim.request.key, token=claim.token)

        await self._write("releasing an idempotency key", work)

    async def close(self, grace: float) -> None:
        """At shutdown: give answers waiting for the database `grace` seconds more."""
        await self._later.close(grace)

    async def _write(self, what: str, work: Callable[[Any], Awaitable[None]]) -> None:
        async def attempt(_: int) -> None:
            async with self._engine.begin() as conn:
                await work(conn)

        try:
            await self._later.now_or_later(attempt, attempts=_STORE_ATTEMPTS, what=what)
        except Exception as exc:
            logger.warning("%s failed: %s", what, type(exc).__name__)


async def settle_deferred_answer(
    engine: AsyncEngine, request: KeyedRequest, response_id: str, status_code: int, body: bytes
) -> None:
    """The turn whose outcome waited for the database is stored: its answer replaces the one given meanwhile."""
    async with engine.begin() as conn:
        await repository.settle_deferred_answer(
            conn,
            tenant_id=request.tenant_id,
            key=request.key,
            response_id=response_id,
            status_code=status_code,
            body=body,
        )


async def purge_expired_keys(engine: AsyncEngine) -> int:
    """Delete expired keys in bounded batches; run by the lifespan's reaper loop."""
    total = 0
    while True:
        async with engine.begin() as conn:
            purged = await repository.purge_expired(conn, PURGE_BATCH)
        total += purged
        if purged < PURGE_BATCH:
            return total
