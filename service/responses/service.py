"""The turn loop. A turn is three steps, and no transaction or pooled connection is held across the middle one:

1. begin (one short transaction): claim the conversation (one writer at a time) and read the history as stored
   JSON texts (one query); store the response as in_progress with its input items, unless the turn runs in a
   conversation and no client can see it before it finishes (neither streamed nor background);
2. call OpenRouter with the history spliced verbatim before the new input;
3. finish (one short transaction): store the output items and the outcome (and the response row and input
   items the begin did not store), append input and output to the conversation, record status/usage, release
   the claim. A failed turn is stored with its error and appends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from asyncpg.exceptions import ForeignKeyViolationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.conversations import repository as conversations
from service.conversations.service import conversation_locked, conversation_not_found, resolve_item_references
from service.db.session import driver_connection
from service.errors import InvalidRequest, NotFound, ServiceUnavailable, is_database_unavailable
from service.idempotency.progress import note_effect
from service.ids import can_exist, new_id
from service.items import ITEM_REFERENCE, NewItem, item_view, normalize_output
from service.pagination import PageRequest, item_list
from service.responses import repository, turn_store
from service.responses.history_cache import HistoryCache
from service.responses.requests import TurnRequest, build_upstream_body
from service.responses.views import ResponseState
from service.upstream.client import OpenRouterClient
from service.upstream.errors import UpstreamError

logger = logging.getLogger("service.turns")

_FINISH_ATTEMPTS = 3
_PREVIOUS_RESPONSE_FK = "fk_response_previous_response_id_response"
# A streamed turn's event log, rendered from the turn's final state right before the statement that stores
# both (None: no log to store).
EventLogFor = Callable[[], turn_store.EventLog | None]
INTERRUPTED_ERROR = {"code": "server_error", "message": "The turn was interrupted before it finished"}


@dataclass
class Turn:
    """A turn between begin and finish: what was claimed and what goes upstream."""

    tenant_id: str
    request: TurnRequest
    state: ResponseState
    history: str = ""  # the stored item texts before the new input, joined by commas
    began: float = field(default_factory=time.monotonic)
    # What the finish stores besides the outcome when the begin stored neither the response row nor its input
    # items (a conversation turn no client sees before its end, turn_store explains); None when it did.
    unseen: turn_store.Unseen | None = None

    def completion_time(self) -> datetime:
        """Now, on the database's clock: created_at is the database's time when the begin statement started,
        `began` the monotonic time then. Computed here rather than by the storing statement so a streamed
        turn's terminal event, rendered before that statement (which stores it in the event log), carries the
        completion time that is stored."""
        return self.state.created_at + timedelta(seconds=time.monotonic() - self.began)

    def take_upstream_body(self, *, stream: bool) -> bytes:
        """The body to send upstream. The history is needed for nothing else, and a streamed turn can run
        for minutes: it is dropped here rather than held (40 KB at 100 items) by every stream in flight."""
        body = build_upstream_body(self.request.params, self.history, self.request.input_items, stream=stream)
        self.history = ""
        return body


def _previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def _read_previous(conn: AsyncConnection, tenant_id: str, previous_id: str) -> str:
    previous = await repository.get_response(conn, tenant_id, previous_id)
    if previous is None:
        raise _previous_not_found(previous_id)
    if previous.status not in {"completed", "incomplete"}:
        raise InvalidRequest(
            f"Previous response '{previous_id}' has status '{previous.status}'; only a completed or incomplete "
            "response can be continued",
            param="previous_response_id",
            code="previous_response_not_usable",
        )
    return ",".join(await repository.chain_history(conn, tenant_id, previous_id))


async def _with_references_resolved(conn: AsyncConnection, tenant_id: str, request: TurnRequest) -> TurnRequest:
    items = await resolve_item_references(conn, tenant_id, request.input_items, param="input")
    return request if items is request.input_items else replace(request, input_items=items)


def _new_state(request: TurnRequest, *, status: str, created_at: Any) -> ResponseState:
    return ResponseState(
        id=new_id("resp"),
        created_at=created_at,
        status=status,
        model=request.model,
        params=request.params,
        instructions=request.instructions,
        metadata=request.metadata,
        conversation_id=request.conversation_id,
        previous_response_id=request.previous_response_id,
        store=request.store,
        background=request.background,
    )


def _new_response(tenant_id: str, request: TurnRequest, state: ResponseState) -> turn_store.NewResponse:
    return turn_store.NewResponse(
        response_id=state.id,
        tenant_id=tenant_id,
        conversation_id=request.conversation_id,
        previous_response_id=request.previous_response_id,
        status=state.status,
        model=request.model,
        # Text cannot hold U+0000; the exact instructions are kept in params_json.
        instructions=_jsonb_safe(request.instructions),
        params_json=_params_json(request.params),
        metadata=request.metadata,
        background=request.background,
        stream=request.stream,
    )


async def begin_turn(
    engine: AsyncEngine,
    tenant_id: str,
    request: TurnRequest,
    *,
    lock_ttl: float,
    histories: HistoryCache,
    status: str = "in_progress",
) -> Turn:
    """Step 1. For store=false nothing is written: the history is only read. `histories` holds long
    conversations' histories as of earlier turns, so only what was added since is read."""
    history = ""
    if request.previous_response_id is not None or any(i.type == ITEM_REFERENCE for i in request.input_items):
        async with engine.connect() as conn:
            request = await _with_references_resolved(conn, tenant_id, request)
            if request.previous_response_id:
                history = await _read_previous(conn, tenant_id, request.previous_response_id)
    if not request.store:
        note_effect()  # the upstream call (a charge) follows
        return Turn(tenant_id, request, _new_state(request, status=status, created_at=datetime.now(UTC)), history)

    if request.conversation_id is not None and not can_exist(request.conversation_id):
        raise conversation_not_found(request.conversation_id, param="conversation")
    state = _new_state(request, status=status, created_at=None)
    response = _new_response(tenant_id, request, state)
    claim: turn_store.Claimed | None = None
    began = time.monotonic()  # about when the statement's transaction starts, the created_at it returns
    async with driver_connection(engine) as db:
        try:
            if request.conversation_id is None:
                state.created_at = await turn_store.begin(db, response, request.input_items)
            else:
                claim = await turn_store.claim_and_begin(
                    db,
                    response,
                    request.input_items,
                    ttl_seconds=lock_ttl,
                    known=histories.get(request.conversation_id),
                )
        except ForeignKeyViolationError as exc:
            # The previous response was read above, on another connection; deleted since, the insert that
            # links to it fails (and writes nothing). The client sees what it would have seen a moment later.
            if request.previous_response_id and exc.constraint_name == _PREVIOUS_RESPONSE_FK:
                raise _previous_not_found(request.previous_response_id) from None
            raise
        if claim is not None and claim.previous_holder is not None:
            # The previous holder's claim expired (its process died): its response ends as failed. A second
            # statement, only on a takeover: as a CTE of the claim it cost every begin ~30 µs (opening the
            # response table's indexes for an UPDATE that almost never matches).
            logger.warning(
                "conversation %s: took over the expired claim of %s", request.conversation_id, claim.previous_holder
            )
            await turn_store.fail_running_response(db, claim.previous_holder, INTERRUPTED_ERROR)
    if request.conversation_id is not None:
        if claim is None:
            async with engine.connect() as conn:
                if await conversations.get_conversation(conn, tenant_id, request.conversation_id) is None:
                    raise conversation_not_found(request.conversation_id, param="conversation")
            raise conversation_locked(request.conversation_id)
        state.created_at, history = claim.created_at, claim.history
        if claim.as_of is None:
            histories.discard(request.conversation_id)
        else:
            histories.put(request.conversation_id, claim.as_of)
    unseen = None
    if claim is not None and not response.visible_before_finish:
        unseen = turn_store.Unseen(response, claim.created_at, claim.position, request.input_items)
    note_effect()  # committed: the turn is claimed (and stored as in_progress unless `unseen`)
    return Turn(tenant_id, request, state, history, began, unseen)


def _params_json(params: dict[str, Any]) -> str:
    return msgspec.json.encode(params).decode()


def _jsonb_safe(value: Any) -> Any:
    """jsonb and text columns cannot hold U+0000; errors, usage and ids come from the upstream and might."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_jsonb_safe(k): _jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_safe(v) for v in value]
    return value


def _usage_numbers(usage: dict[str, Any] | None) -> tuple[int, int, Decimal]:
    if not isinstance(usage, dict):
        return 0, 0, Decimal(0)

    def whole(name: str) -> int:
        value = usage.get(name)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    cost = usage.get("cost")
    return (
        whole("input_tokens"),
        whole("output_tokens"),
        Decimal(str(cost)) if isinstance(cost, int | float) and not isinstance(cost, bool) else Decimal(0),
    )


def apply_upstream_result(state: ResponseState, result: dict[str, Any]) -> list[NewItem]:
    """Fold OpenRouter's final Response into our state; returns the output items to store."""
    status = result.get("status")
    state.status = status if status in repository.TERMINAL_STATUSES else "completed"
    state.upstream_model = _jsonb_safe(result.get("model")) if isinstance(result.get("model"), str) else None
    state.usage = _jsonb_safe(result.get("usage")) if isinstance(result.get("usage"), dict) else None
    state.error = _jsonb_safe(result.get("error")) if isinstance(result.get("error"), dict) else None
    details = result.get("incomplete_details")
    state.incomplete_details = _jsonb_safe(details) if isinstance(details, dict) else None
    outputs = normalize_output(result.get("output"), response_status=state.status)
    state.output = [(item.id, item.status, item.body) for item in outputs]
    return outputs


async def finish_turn(
    engine: AsyncEngine,
    turn: Turn,
    outputs: list[NewItem],
    *,
    upstream_id: str | None = None,
    append: bool | None = None,
    event_log: EventLogFor | None = None,
) -> None:
    """Step 3, retried when the database hiccups; one statement, so never half-written. `event_log` renders
    a streamed turn's event log from the final state, for that statement to store with the outcome."""
    state = turn.state
    if not turn.request.store:
        return

    async def store(*, retry: bool = True) -> None:
        async with driver_connection(engine, finishing=True) as db:
            # An attempt can commit and lose only its reply (the connection drops in between). Storing again
            # would find the claim released and write the turn as failed over its own answer, or insert its
            # output items twice: a retry first looks for its own completed_at, which no other writer uses.
            if retry and await turn_store.finished_at(db, state.id, completed_at):
                return
            await _finish(db, turn, outputs, upstream_id, append=append, event_log=event_log or _no_event_log)

    completed_at = state.completed_at = turn.completion_time()
    for attempt in range(1, _FINISH_ATTEMPTS + 1):
        try:
            await store(retry=attempt > 1)
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            if attempt == _FINISH_ATTEMPTS:
                _keep_in_background(_store_when_database_returns(store, state.id))
                raise ServiceUnavailable(
                    f"The answer for response '{state.id}' could not be stored yet because the database is "
                    f"unavailable. It is kept and stored as soon as the database is back (for up to "
                    f"{_STORE_LATER_SECONDS // 60} minutes): GET /v1/responses/{state.id} shows it then.",
                    code="database_unavailable",
                ) from None
            logger.warning("storing turn %s failed (attempt %d), retrying", state.id, attempt)
            await asyncio.sleep(0.2 * attempt)


# A finished turn the database could not take yet is retried in the background, so a database restart at the
# wrong moment loses no answer and does not leave the conversation claimed until TURN_LOCK_TTL.
_STORE_LATER_SECONDS = 600
_background_stores: set[asyncio.Task[None]] = set()


def _keep_in_background(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _background_stores.add(task)
    task.add_done_callback(_background_stores.discard)


async def _store_when_database_returns(store: Callable[[], Awaitable[None]], response_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STORE_LATER_SECONDS
    delay = 1.0
    while loop.time() < deadline:
        await asyncio.sleep(delay)
        try:
            await store()
        except Exception as exc:
            if not is_database_unavailable(exc):
                logger.exception("storing turn %s later failed; the reaper will finish it", response_id)
                return
            delay = min(delay * 2, 15.0)
        else:
            logger.warning("turn %s was stored after the database came back", response_id)
            return
    logger.error("turn %s could not be stored within %ds; the reaper will fail it", response_id, _STORE_LATER_SECONDS)


def _no_event_log() -> None:
    return None


async def _finish(
    db: Any, turn: Turn, outputs: list[NewItem], upstream_id: str | None, *, append: bool | None, event_log: EventLogFor
) -> None:
    state = turn.state
    completed_at = state.completed_at
    assert completed_at is not None  # set by finish_turn
    input_tokens, output_tokens, cost = _usage_numbers(state.usage)
    should_append = state.status in {"completed", "incomplete"} if append is None else append

    def outcome() -> turn_store.Outcome:
        return turn_store.Outcome(
            response_id=state.id,
            tenant_id=turn.tenant_id,
            status=state.status,
            upstream_id=upstream_id,
            upstream_model=state.upstream_model,
            usage=state.usage,
            error=state.error,
            incomplete_details=state.incomplete_details,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            completed_at=completed_at,
        )

    conversation_id = turn.request.conversation_id
    if conversation_id:
        appended = turn_store.Appended(
            conversation_id=conversation_id,
            append=should_append,
            input_count=len(turn.request.input_items),
            title=conversations.title_from(turn.request.input_items) if should_append else None,
            last_model=state.upstream_model or state.model,
        )
        if await turn_store.finish_in_conversation(db, outcome(), appended, outputs, event_log(), unseen=turn.unseen):
            return
        # Our claim expired and another turn took the conversation: appending now would interleave.
        state.status = "failed"
        state.error = {
            "code": "server_error",
            "message": "The turn outlived its conversation claim (TURN_LOCK_TTL) and was not appended",
        }
    await turn_store.finish(db, outcome(), outputs, event_log(), unseen=turn.unseen)


async def fail_turn(
    engine: AsyncEngine,
    turn: Turn,
    error: dict[str, Any],
    outputs: list[NewItem] | None = None,
    *,
    event_log: EventLogFor | None = None,
) -> None:
    """Store the turn as failed (with any partial output) and release the claim; never raises."""
    turn.state.status = "failed"
    turn.state.error = _jsonb_safe(error)
    items = outputs or []
    turn.state.output = [(i.id, i.status, i.body) for i in items]
    try:
        await finish_turn(engine, turn, items, append=False, event_log=event_log)
    except Exception:
        logger.exception("could not store failed turn %s; the reaper will finish it", turn.state.id)


async def run_turn(
    engine: AsyncEngine,
    upstream: OpenRouterClient,
    tenant_id: str,
    request: TurnRequest,
    *,
    lock_ttl: float,
    histories: HistoryCache,
) -> dict[str, Any]:
    """A non-streamed turn, start to finish."""
    turn = await begin_turn(engine, tenant_id, request, lock_ttl=lock_ttl, histories=histories)
    try:
        result = await upstream.create(turn.take_upstream_body(stream=False))
    except UpstreamError as error:
        await asyncio.shield(fail_turn(engine, turn, error.response_error()))
        raise
    except BaseException:
        await asyncio.shield(fail_turn(engine, turn, INTERRUPTED_ERROR))
        raise
    outputs = apply_upstream_result(turn.state, result)
    upstream_id = _jsonb_safe(result.get("id")) if isinstance(result.get("id"), str) else None
    await asyncio.shield(finish_turn(engine, turn, outputs, upstream_id=upstream_id))
    return turn.state.render()


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
