"""A turn's life, top to bottom. No transaction or pooled connection is held while the upstream works.

    begin   one short statement: claim the conversation (one writer at a time), or check the response a chain
            continues; store the response as in_progress with its input items (unless no client can see it
            before it ends: turn_store explains); read the history as stored JSON texts, only what this worker
            does not hold already (history_cache.py for conversations, chain_cache.py for chains);
    run     send the history, spliced verbatim before the new input, upstream. A streamed or background turn is
            run by the runner (service/responses/runner.py), which ends it with finish or fail below;
    finish  one short statement: store the output items and the outcome, append input and output to the
            conversation when the turn answered, release the claim;
    fail    finish as failed, with the error and any partial output; never raises;
    retry   a finish the database could not take is retried at once a few times, then kept and retried in
            the background until the database is back, for up to OUTCOME_RETRY_SECONDS; then the turn's
            claim is no longer renewed, and the expiry sweep fails it. TurnContext owns those tasks and awaits
            them at shutdown.

TurnContext holds what every turn needs (engine, upstream client, context windows, history and chain caches);
the application builds one and keeps it on its Runtime.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import msgspec
from asyncpg.exceptions import ForeignKeyViolationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.cluster import running as running_turns
from service.context.service import ContextWindows, refuse_outputs_without_calls
from service.conversations import repository as conversations
from service.conversations.service import (
    conversation_locked,
    conversation_not_found,
    refuse_ids_held,
    resolve_item_references,
)
from service.db.retry import Later
from service.db.session import driver_connection
from service.errors import InvalidRequest, ServiceError, ServiceUnavailable
from service.idempotency.progress import (
    current_idempotency_key,
    note_effect,
    note_outcome_deferred,
    note_stopped_before_answer,
)
from service.ids import can_exist, new_id
from service.items import ITEM_REFERENCE, NewItem, duplicate_item, refuse_duplicate_ids, with_fresh_ids
from service.limits.sizes import ConversationCaps
from service.observability import turns as observe_turns
from service.observability.record import current_request_id
from service.responses import turn_store
from service.responses.chain_cache import ChainCache, ChainHistory
from service.responses.frame_log import FrameLog
from service.responses.history_cache import HistoryCache
from service.responses.outcome import apply_upstream_result, jsonb_safe, upstream_id_of
from service.responses.requests import TurnRequest, previous_history_gone, previous_not_found, previous_not_usable
from service.responses.status import ANSWERED, Status, is_answered
from service.responses.streaming import terminal_frame
from service.responses.usage import usage_numbers
from service.responses.views import ResponseState
from service.upstream.client import OpenRouterClient
from service.upstream.errors import UpstreamError

logger = logging.getLogger("service.turns")

INTERRUPTED_ERROR = {"code": "server_error", "message": "The turn was interrupted before it finished"}
_LOST_CLAIM_ERROR = {
    "code": "server_error",
    "message": "The turn outlived its conversation claim (TURN_LOCK_TTL) and was not appended",
}
_REFUSED_ERROR = {
    "code": "server_error",
    "message": "The database refused to store this response's outcome; it is stored as failed, without its output",
}
_TAKEN_OVER_ERROR = {
    "code": "server_error",
    "message": "The turn was taken for interrupted and stored as failed before its answer came; the answer was "
    "not stored",
}
_FINISH_ATTEMPTS = 3
# Runs of a finish whose output ids the tenant held: ids of ours replace them after the first, and are unique;
# a third covers another of the upstream's ids stored by a concurrent finish in between.
_HELD_ID_ROUNDS = 3


@dataclass
class Turn:
    """A turn between begin and finish: what was claimed and what goes upstream."""

    tenant_id: str
    request: TurnRequest
    state: ResponseState
    history: str = ""  # the stored item texts before the new input, joined by commas
    began: float = field(default_factory=time.monotonic)
    # What the finish stores besides the outcome when the begin stored neither the response row nor its input
    # items (a turn no client sees before its end, turn_store explains); None when it did.
    unseen: turn_store.Unseen | None = None
    # For a stored turn outside any conversation: the history before it, as of a history generation, which
    # this response's entry in the chain cache extends at the finish. Usually the previous response's entry.
    chain: ChainHistory | None = None
    # The input items' token counts as the model counted them, once the upstream's usage told
    # (service/context/service.py); None: their estimates stand.
    input_counts: list[int] | None = None
    # The stored token count of each item of `history` (negative for an item stored before counts were kept),
    # when read with it; None: not read (service/context/ledger.py then estimates what it does not hold).
    history_counts: Sequence[int] | None = None

    def counted_inputs(self) -> list[NewItem]:
        """The input items with the token counts their finish stores."""
        items = self.request.input_items
        if self.input_counts is None:
            return list(items)
        return [replace(item, token_count=count) for item, count in zip(items, self.input_counts, strict=True)]

    def completion_time(self) -> datetime:
        """Now, on the database's clock: created_at is the database's time when the begin statement started,
        `began` the monotonic time then. Computed here rather than by the storing statement so a streamed
        turn's terminal event, rendered before that statement (which stores it in the event log), carries the
        completion time that is stored."""
        return self.state.created_at + timedelta(seconds=time.monotonic() - self.began)


@dataclass(frozen=True)
class RelayedEvents:
    """A streamed turn's events as relayed, all but the terminal one: the finish renders that one from the
    state it stores, and stores the whole log with it. The frames are packed only then, with a connection in
    hand, not held packed by every stream waiting for one."""

    frames: FrameLog
    count: int

    def log(self, state: ResponseState) -> turn_store.EventLog:
        terminal = terminal_frame(state.render(), self.count)
        return turn_store.EventLog(self.frames.packed(self.count, terminal), self.count + 1)


class TurnContext:
    def __init__(
        self,
        engine: AsyncEngine,
        upstream: OpenRouterClient,
        histories: HistoryCache,
        windows: ContextWindows,
        *,
        lock_ttl: float,
        chains: ChainCache | None = None,
        caps: ConversationCaps | None = None,
        outcome_retry_seconds: float = 600.0,
    ) -> None:
        self.caps = caps or ConversationCaps()
        self.engine = engine
        self.upstream = upstream
        self.histories = histories  # long conversations' histories as of their last turn in this worker
        self.windows = windows  # what of a history fits the model's context window (service/context)
        self.chains = ChainCache(0) if chains is None else chains  # response chains' histories, by response id
        self.lock_ttl = lock_ttl
        self._plain_turns: set[asyncio.Task[Any]] = set()  # non-streamed turns running (their requests' tasks)
        self._stopping_plain_turns = False
        self._stores_later = Later(
            seconds=outcome_retry_seconds,
            max_delay=15.0,
            fallback="its claim is no longer renewed: once it expires, the expiry sweep fails the turn",
            log=logger,
            traceback=True,
        )

    # -- a non-streamed turn, start to finish -----------------------------------------------------------------
    async def run(self, tenant_id: str, request: TurnRequest) -> dict[str, Any]:
        turn = await self.begin(tenant_id, request)
        task = asyncio.current_task()
        if task is not None:
            self._plain_turns.add(task)
        try:
            result = await self.windows.create(self.upstream, turn)
        except UpstreamError as error:
            await asyncio.shield(self.fail(turn, error.response_error()))
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self.fail(turn, INTERRUPTED_ERROR))
            if task is None or not self._stopping_plain_turns:
                raise
            # Stopped by stop_plain_turns: answered as a retryable refusal, not left to the server's own timeout.
            task.uncancel()
            note_stopped_before_answer()
            raise ServiceUnavailable(
                "The service is shutting down and stopped this turn (stored as failed); retry it",
                code="service_unavailable",
            ) from None
        except BaseException:
            await asyncio.shield(self.fail(turn, INTERRUPTED_ERROR))
            raise
        finally:
            if task is not None:
                self._plain_turns.discard(task)
        outputs = apply_upstream_result(turn.state, result)
        await asyncio.shield(self.finish(turn, outputs, upstream_id=upstream_id_of(result)))
        return turn.state.render()

    # -- begin -----------------------------------------------------------------------------------------------
    async def begin(self, tenant_id: str, request: TurnRequest) -> Turn:
        """For store=false nothing is written: the history is only read."""
        if any(i.type == ITEM_REFERENCE for i in request.input_items):
            async with self.engine.connect() as conn:
                request = await _with_references_resolved(conn, tenant_id, request)
        refuse_duplicate_ids(request.input_items, param="input")
        if request.previous_response_id is not None:
            return await self._begin_chained(tenant_id, request, request.previous_response_id)
        if request.conversation_id is None:
            refuse_outputs_without_calls("", request.input_items)  # no history: the calls must be in the input
        if not request.store:
            note_effect()  # the upstream call (a charge) follows
            return Turn(tenant_id, request, _new_state(request, created_at=datetime.now(UTC)))
        if request.conversation_id is None:
            return await self._begin_alone(tenant_id, request)
        return await self._begin_in_conversation(tenant_id, request)

    async def _begin_chained(self, tenant_id: str, request: TurnRequest, previous_id: str) -> Turn:
        """A turn continuing a previous response: its history is the chain's, from the chain cache or read.
        Unless a client sees the response before it ends, nothing is written before the finish, which stores
        the response whole (turn_store explains why that is cheaper)."""
        state = _new_state(request, created_at=None)
        response = _new_response(tenant_id, request, state) if request.store else None
        running = None
        if response is not None and not response.visible_before_finish:
            # Stored, but seen by no client before its end: its begin only lists it on its chain's row.
            running = turn_store.RunningTurn(state.id, self.lock_ttl)
        async with driver_connection(self.engine) as db:
            began = time.monotonic()  # not before the checkout: a wait for a connection would count as turn time
            checked = any(item.id_given for item in request.input_items)
            if checked:
                # Read first without listing the turn on its chain's row, so that a refusal leaves nothing there.
                chain, now = await self._chain_before(db, tenant_id, previous_id, None)
                _refuse_ids_in_history(chain.whole()[0], request.input_items)
            if not checked or running is not None:
                chain, now = await self._chain_before(db, tenant_id, previous_id, running)
            state.created_at = now
            history, counts = chain.whole()
            size = len(history) + sum(len(item.body) for item in request.input_items)
            beyond = self.caps.chain_excess(previous_id, len(counts) + len(request.input_items), size)
            if response is None:
                if beyond is not None:
                    raise beyond
                refuse_outputs_without_calls(history, request.input_items)
                note_effect()  # the upstream call (a charge) follows
                return Turn(tenant_id, request, state, history, history_counts=counts)
            if running is not None:
                running_turns.add(self.engine, state.id, None)  # for the heartbeat (service/cluster)
                note_effect(response_id=state.id)  # nothing is stored yet; the upstream call (a charge) follows
                stored_at_finish = turn_store.Unseen(response, now, None, request.input_items)
                unseen = Turn(tenant_id, request, state, history, began, stored_at_finish, chain, history_counts=counts)
            else:
                if beyond is not None:  # before the begin stores anything
                    raise beyond
                refuse_outputs_without_calls(history, request.input_items)  # before the begin stores anything
                unseen = None
                began = time.monotonic()
                try:
                    state.created_at, _ = await turn_store.begin(db, response, request.input_items)
                except ForeignKeyViolationError as exc:
                    # The previous response was deleted since it was read: the insert that links to it fails (and
                    # writes nothing). The client sees what it would have seen a moment later.
                    if exc.constraint_name == turn_store.PREVIOUS_RESPONSE_FK:
                        raise previous_not_found(previous_id) from None
                    raise
        if unseen is not None:
            # Listed on its chain's row by the read: a refusal found only now is stored as failed, as a
            # conversation turn's is (a read without listing first would cost every chain tool turn one).
            if beyond is not None:
                await self._refuse_stored(unseen, beyond)
            await self._refuse_outputs_without_calls(unseen)
            return unseen
        running_turns.add(self.engine, state.id, None)  # for the heartbeat (service/cluster)
        note_effect(response_id=state.id)  # committed: the turn is stored as in_progress
        return Turn(tenant_id, request, state, history, began, None, chain, history_counts=counts)

    async def _chain_before(
        self, db: Any, tenant_id: str, previous_id: str, running: turn_store.RunningTurn | None
    ) -> tuple[ChainHistory, datetime]:
        """The history a child of `previous_id` sends upstream, checked against the database in one statement:
        the previous response is the tenant's and usable, and a cached history is still current. `running`:
        the same statement lists that turn on its chain's row."""
        if not can_exist(previous_id):
            raise previous_not_found(previous_id)
        walk = not self.chains.holds(previous_id)
        previous = await turn_store.read_previous(db, tenant_id, previous_id, ancestors=walk, running=running)
        if previous is not None and not walk and self.chains.get(previous_id, tenant_id, previous.generation) is None:
            # A stale entry: read again, with the ancestors.
            previous = await turn_store.read_previous(db, tenant_id, previous_id, ancestors=True, running=running)
        if previous is None:
            raise previous_not_found(previous_id)
        if previous.status == turn_store.HISTORY_GONE:
            raise previous_history_gone(previous_id)
        if previous.status not in ANSWERED:
            raise previous_not_usable(previous_id, previous.status)
        chain = self.chains.get(previous_id, tenant_id, previous.generation)
        if chain is None:
            chain = self._from_ancestors(previous, tenant_id)
            if chain is None:
                try:
                    text, counts = await turn_store.chain_history(db, tenant_id, previous_id)
                except turn_store.ConversationHistoryGone:
                    # An ancestor's conversation (the previous response's own is found above).
                    if running is not None:
                        await turn_store.unlist_running(db, running)
                    raise previous_history_gone(previous_id) from None
                chain = ChainHistory(tenant_id, previous.generation, text, counts)
            self.chains.put(previous_id, chain)
        return chain, previous.now

    def _from_ancestors(self, previous: turn_store.Previous, tenant_id: str) -> ChainHistory | None:
        """The history from the nearest cached ancestor and the items of the responses after it, or from the
        chain's first response when it is within reach; None when neither is (or the chain began in a
        conversation, whose earlier items are not read here)."""
        after: list[turn_store.Ancestor] = []  # the responses below the one looked at, newest first
        for ancestor in previous.ancestors:
            cached = self.chains.get(ancestor.id, tenant_id, previous.generation)
            if cached is not None:
                return _followed_by(cached, reversed(after))
            if ancestor.conversation_id is not None:
                return None
            after.append(ancestor)
            if ancestor.previous_response_id is None:
                return _followed_by(ChainHistory(tenant_id, previous.generation, ""), reversed(after))
        return None

    async def _begin_alone(self, tenant_id: str, request: TurnRequest) -> Turn:
        """A stored turn that starts a chain: in no conversation, continuing no response."""
        state = _new_state(request, created_at=None)
        async with driver_connection(self.engine) as db:
            began = time.monotonic()  # about when the statement's transaction starts, the created_at it returns
            response = _new_response(tenant_id, request, state)
            state.created_at, generation = await turn_store.begin(db, response, request.input_items)
        running_turns.add(self.engine, state.id, None)  # for the heartbeat (service/cluster)
        note_effect(response_id=state.id)  # committed: the turn is stored as in_progress
        return Turn(tenant_id, request, state, "", began, chain=ChainHistory(tenant_id, generation, ""))

    async def _begin_in_conversation(self, tenant_id: str, request: TurnRequest) -> Turn:
        conversation_id = request.conversation_id
        assert conversation_id is not None
        if not can_exist(conversation_id):
            raise conversation_not_found(conversation_id, param="conversation")
        if any(item.id_given for item in request.input_items):
            # Before the claim, so that a refusal leaves nothing behind. A concurrent writer could store one of
            # these ids between this read and the claim; it would have to send the same ids at the same moment.
            async with self.engine.connect() as conn:
                await refuse_ids_held(conn, tenant_id, conversation_id, request.input_items, param="input")
        state = _new_state(request, created_at=None)
        response = _new_response(tenant_id, request, state)
        async with driver_connection(self.engine) as db:
            began = time.monotonic()  # after the checkout, as the claim's created_at is the statement's start
            claim = await turn_store.claim_and_begin(
                db,
                response,
                request.input_items,
                ttl_seconds=self.lock_ttl,
                known=self.histories.get(conversation_id),
            )
            if claim is not None and claim.previous_holder is not None:
                # The previous holder's claim expired (its process died): its response ends as failed. A second
                # statement, only on a takeover: as part of the claim it would cost every begin the opening of
                # the response table's indexes for an UPDATE that almost never matches.
                logger.warning(
                    "conversation %s: took over the expired claim of %s", conversation_id, claim.previous_holder
                )
                await turn_store.fail_running_response(db, claim.previous_holder, INTERRUPTED_ERROR)
                observe_turns.turns_failed_for_their_process(1)  # its late finish, if it comes, writes nothing
        if claim is None:
            async with self.engine.connect() as conn:
                if await conversations.get_conversation(conn, tenant_id, conversation_id) is None:
                    raise conversation_not_found(conversation_id, param="conversation")
            raise conversation_locked(conversation_id)
        state.created_at = claim.created_at
        if claim.as_of is None:
            self.histories.discard(conversation_id)
        else:
            self.histories.put(conversation_id, claim.as_of)
        unseen = None
        if not response.visible_before_finish:
            unseen = turn_store.Unseen(response, claim.created_at, claim.position, request.input_items)
        running_turns.add(self.engine, state.id, conversation_id)  # for the heartbeat (service/cluster)
        note_effect(response_id=state.id)  # committed: the turn is claimed (stored as in_progress unless `unseen`)
        turn = Turn(tenant_id, request, state, claim.history, began, unseen, history_counts=claim.counts)
        await self._refuse_beyond_caps(turn, claim.item_count)
        await self._refuse_outputs_without_calls(turn)
        return turn

    async def _refuse_beyond_caps(self, turn: Turn, item_count: int) -> None:
        """A conversation at its size cap takes no more turns: this one is stored as failed, nothing sent."""
        inputs = turn.request.input_items
        size = len(turn.history) + sum(len(item.body) for item in inputs)
        assert turn.request.conversation_id is not None
        refusal = self.caps.excess(turn.request.conversation_id, item_count + len(inputs), size, param="conversation")
        if refusal is not None:
            await self._refuse_stored(turn, refusal)

    async def _refuse_stored(self, turn: Turn, refusal: InvalidRequest) -> NoReturn:
        """A refusal found once the turn was claimed or listed: the turn is stored as failed, nothing sent."""
        await asyncio.shield(self.fail(turn, {"code": refusal.code, "message": refusal.message}))
        raise refusal

    async def _refuse_outputs_without_calls(self, turn: Turn) -> None:
        """Checked once the claim read the history (a read before it would cost every tool turn one): such a
        turn is stored as failed, as one past the caps is, and nothing is sent."""
        try:
            refuse_outputs_without_calls(turn.history, turn.request.input_items)
        except InvalidRequest as refusal:
            await asyncio.shield(self.fail(turn, {"code": "invalid_prompt", "message": refusal.message}))
            raise

    # -- finish, fail, retry ----------------------------------------------------------------------------------
    async def finish(
        self,
        turn: Turn,
        outputs: list[NewItem],
        *,
        upstream_id: str | None = None,
        events: RelayedEvents | None = None,
    ) -> None:
        """Store the outcome held in turn.state: one statement, so never half-written. `events`: a streamed
        turn's relayed events, stored as its event log by the same statement. Raises ServiceUnavailable when
        the database stayed unavailable: the outcome is then kept and stored once it is back."""
        state = turn.state
        observe_turns.turn_finished(turn)
        completed_at = state.completed_at = turn.completion_time()  # shown for store=false turns too
        if not turn.request.store:
            observe_turns.turn_ended(state.status)
            return

        async def store(attempt: int) -> None:
            async with driver_connection(self.engine, finishing=True) as db:
                # An attempt can commit and lose only its reply (the connection drops in between). Storing again
                # would find the claim released and write the turn as failed over its own answer, or insert its
                # output items twice: a retry first looks for its own completed_at, which no other writer uses.
                ours = attempt > 1 and await turn_store.finished_at(db, state.id, completed_at)
                if not ours:
                    ours = await _store_outcome(db, turn, outputs, upstream_id, events)
            running_turns.discard(self.engine, state.id)
            if ours:  # else the turn that took it over counted it
                observe_turns.turn_ended(state.status)

        try:
            stored = await self._stores_later.now_or_later(
                store,
                attempts=_FINISH_ATTEMPTS,
                what=f"storing turn {state.id}",
                # Listed, the heartbeat would renew its claim for as long as the process lives: the conversation
                # locked, the response in_progress.
                given_up=lambda: running_turns.discard(self.engine, state.id),
            )
        except Exception as refused:  # for good, or rolled back on every attempt: passing failures are retried
            running_turns.discard(self.engine, state.id)
            stored_failed = await self._store_as_refused(turn, refused)
            raise ServiceError(
                f"The answer for response '{state.id}' could not be stored; "
                + ("the response is stored as failed." if stored_failed else "nor could it be stored as failed."),
                status_code=500,
                code="server_error",
            ) from refused
        if not stored:
            note_outcome_deferred()  # a replay of this request's key answers with the outcome once stored
            raise ServiceUnavailable(
                f"The answer for response '{state.id}' could not be stored yet because the database is "
                f"unavailable. It is kept and stored as soon as the database is back (for up to "
                f"{_duration(self._stores_later.seconds)}): GET /v1/responses/{state.id} shows it then.",
                code="database_unavailable",
            )
        self._remember_chain(turn, outputs)

    async def _store_as_refused(self, turn: Turn, refused: Exception) -> bool:
        """The database refused the outcome for good (a value or rule it will never take), or rolled it back for
        a concurrent transaction on every attempt. Stored as failed without its output, the turn releases its
        conversation now rather than at the claim's expiry, and clients see what happened; its usage is kept, as
        the upstream charged for it. Should even that be refused, the last resort only fails the response (if its
        begin stored it) and releases the claim; and should that be refused too, the claim's expiry frees the
        conversation and the expiry sweep fails the response."""
        state = turn.state
        logger.error("storing turn %s was refused; storing it as failed", state.id, exc_info=refused)
        state.status = Status.FAILED.value
        state.error = dict(_REFUSED_ERROR)
        state.output = []
        try:
            async with driver_connection(self.engine, finishing=True) as db:
                if await _store_outcome(db, turn, [], None, None):
                    observe_turns.turn_ended(state.status)
        except Exception:
            logger.exception("could not store turn %s as failed either; releasing its claim only", state.id)
        else:
            return True
        try:
            async with driver_connection(self.engine, finishing=True) as db:
                return await turn_store.abandon(db, state.id, turn.request.conversation_id, _REFUSED_ERROR)
        except Exception:
            logger.exception("could not release turn %s's claim either; its expiry frees it", state.id)
            return False

    def _remember_chain(self, turn: Turn, outputs: list[NewItem]) -> None:
        """An answered response outside any conversation: the history its children send, made from the history
        before it and its own items, so that continuing it reads no history."""
        if turn.chain is None or not is_answered(turn.state.status):
            return
        own = [*turn.counted_inputs(), *outputs]
        entry = turn.chain.followed_by((item.body for item in own), (item.token_count for item in own))
        self.chains.put(turn.state.id, entry)

    async def fail(
        self,
        turn: Turn,
        error: dict[str, Any],
        outputs: list[NewItem] | None = None,
        *,
        events: RelayedEvents | None = None,
    ) -> None:
        """Store the turn as failed (with any partial output) and release the claim; never raises."""
        turn.state.status = Status.FAILED.value
        turn.state.error = jsonb_safe(error)
        items = outputs or []
        turn.state.output = [(i.id, i.status, i.body) for i in items]
        try:
            await self.finish(turn, items, events=events)
        except ServiceError:
            pass  # kept until the database is back, or refused and stored without its output: finish logged it
        except Exception:
            logger.exception("could not store failed turn %s; the reaper will finish it", turn.state.id)

    async def stop_plain_turns(self, grace: float) -> None:
        """At shutdown: non-streamed turns get `grace` seconds to finish, as streamed ones do (runner.shutdown);
        the rest are stopped, stored as failed, and answered 503 in OpenAI's envelope, before the server's own
        timeout would cut their connections with a bare 500."""
        if not self._plain_turns:
            return
        _, pending = await asyncio.wait(set(self._plain_turns), timeout=grace)
        self._stopping_plain_turns = True
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("stopped %d non-streamed turn(s) still running at the end of the grace period", len(pending))

    async def close(self, grace: float) -> None:
        """At shutdown: give outcomes waiting for the database `grace` seconds more; the reaper fails the rest
        (their claims expire) at the next start."""
        given_up = await self._stores_later.close(grace)
        if given_up:
            logger.error("%d turn outcome(s) could not be stored before shutdown", given_up)


async def _store_outcome(
    db: Any, turn: Turn, outputs: list[NewItem], upstream_id: str | None, events: RelayedEvents | None
) -> bool:
    """An output item whose id the turn's own inputs, or items the tenant stored before, hold already (an
    upstream that reuses ids) is stored under an id of ours: so it is in `outputs` (in place: the caller keeps
    what was stored, even when only the reply to the statement was lost). False when another turn or process had
    taken the turn over (_write_outcome)."""
    own_input_ids = {item.id for item in turn.counted_inputs()}
    if any(item.id in own_input_ids for item in outputs):
        _give_fresh_ids(turn, outputs, own_input_ids)
    for _ in range(_HELD_ID_ROUNDS - 1):
        try:
            return await _write_outcome(db, turn, outputs, upstream_id, events)
        except turn_store.OutputIdsHeld as held:
            _give_fresh_ids(turn, outputs, held.ids)
    return await _write_outcome(db, turn, outputs, upstream_id, events)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


def _give_fresh_ids(turn: Turn, outputs: list[NewItem], taken: Collection[str]) -> None:
    """The new ids are shown from now on, but not to the end of a stream that relayed the upstream's ones: its
    final Response (terminal event and event log) keeps them, as its item events did, since the SDK's stream
    helper refuses a final output whose ids differ from the streamed items'."""
    logger.warning("response %s: the upstream sent output ids already held; ids of ours replace them", turn.state.id)
    with_fresh_ids(outputs, taken)
    if not turn.request.stream:
        turn.state.output = [(item.id, item.status, item.body) for item in outputs]


async def _write_outcome(
    db: Any, turn: Turn, outputs: list[NewItem], upstream_id: str | None, events: RelayedEvents | None
) -> bool:
    """Store the outcome; False when the turn had been taken over meanwhile (its claim taken by another turn, or
    its process taken for dead): what the taker stored stands, and the taker counted the turn as failed."""
    state = turn.state
    completed_at = state.completed_at
    assert completed_at is not None  # set by finish

    def outcome() -> turn_store.Outcome:
        input_tokens, output_tokens, cost = usage_numbers(state.usage)
        return turn_store.Outcome(
            response_id=state.id,
            tenant_id=turn.tenant_id,
            status=state.status,
            upstream_id=upstream_id,
            upstream_model=state.upstream_model,
            service_tier=state.service_tier,
            usage=state.usage,
            error=state.error,
            incomplete_details=state.incomplete_details,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            completed_at=completed_at,
        )

    def event_log() -> turn_store.EventLog | None:
        return None if events is None else events.log(state)

    inputs = turn.counted_inputs()
    input_counts = [item.token_count for item in inputs]
    unseen = turn.unseen if turn.unseen is None else replace(turn.unseen, inputs=inputs)
    conversation_id = turn.request.conversation_id
    if conversation_id is not None:
        answered = is_answered(state.status)
        appended = turn_store.Appended(
            conversation_id=conversation_id,
            append=answered,
            input_count=len(inputs),
            input_counts=input_counts,
            title=conversations.title_from(turn.request.input_items) if answered else None,
            last_model=state.upstream_model or state.model,
        )
        if await turn_store.finish_in_conversation(db, outcome(), appended, outputs, event_log(), unseen=unseen):
            return True
        # Our claim expired and another turn took the conversation: appending now would interleave.
        state.status = Status.FAILED.value
        state.error = dict(_LOST_CLAIM_ERROR)
        if not await turn_store.finish(db, outcome(), outputs, event_log(), unseen=unseen, input_counts=input_counts):
            state.error = dict(_TAKEN_OVER_ERROR)
        return False
    if not await turn_store.finish(db, outcome(), outputs, event_log(), unseen=unseen, input_counts=input_counts):
        # Taken over while it ran (its process taken for dead, its claim expired): the failure stored then stands.
        state.status = Status.FAILED.value
        state.error = dict(_TAKEN_OVER_ERROR)
        return False
    return True


# -- what a begin reads and builds --------------------------------------------------------------------------
def _followed_by(history: ChainHistory, ancestors: Iterable[turn_store.Ancestor]) -> ChainHistory:
    """A history followed by the items of `ancestors`, oldest first."""
    responses = list(ancestors)
    return history.followed_by(
        (response.items for response in responses), itertools.chain.from_iterable(r.counts for r in responses)
    )


def _refuse_ids_in_history(history: str, items: Sequence[NewItem]) -> None:
    """A chain's history is its items' stored JSON texts, each holding its id as `"id":"…"`, encoded as every
    stored item is (a string holding that text has its quotes escaped, so it cannot match)."""
    for item in items:
        if item.id_given and msgspec.json.encode({"id": item.id}).decode()[1:-1] in history:
            raise duplicate_item(item.id, "input")


async def _with_references_resolved(conn: AsyncConnection, tenant_id: str, request: TurnRequest) -> TurnRequest:
    items = await resolve_item_references(conn, tenant_id, request.input_items, param="input")
    return request if items is request.input_items else replace(request, input_items=items)


def _new_state(request: TurnRequest, *, created_at: Any) -> ResponseState:
    return ResponseState(
        id=new_id("resp"),
        created_at=created_at,
        status=Status.IN_PROGRESS.value,
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
        instructions=jsonb_safe(request.instructions),
        params_json=msgspec.json.encode(request.params).decode(),
        metadata=request.metadata,
        background=request.background,
        stream=request.stream,
        request_id=current_request_id(),
        idempotency_key=current_idempotency_key(),
    )
