"""The turn runner: streamed and background turns run in tasks owned by the application, not by a request.

A request that starts such a turn only subscribes to its run; when its client goes away the subscription
ends and the run goes on (unless STREAM_DISCONNECT_POLICY=cancel), so nothing generated is lost. A run:

1. publishes `response.created` and `response.in_progress` (our Response, status in_progress); a background
   turn's `response.created` and `response.queued` come first with status queued, as its create answer said;
2. opens OpenRouter's stream (retries happen before the first byte, exactly as for a non-streamed turn) and
   relays its events through `StreamAssembler` with our own sequence numbers;
3. stores the outcome with the turn's finish or fail (service/responses/turn.py; no connection is held while
   streaming): the one terminal event is rendered from the stored state, and for stream=true the event log
   (for `starting_after` resumes) is written by the same statement as the outcome;
4. publishes the terminal event and leaves the registry.

Events live in memory, per run, as encoded SSE frames (a FrameLog); followers read it at their own pace, so a
slow client never holds up the run and costs nothing per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.bus import Bus
from service.cluster.remote import cancel_elsewhere
from service.config import Settings
from service.errors import Conflict, InvalidRequest, ServiceError, ServiceUnavailable
from service.observability import turns as observe_turns
from service.responses.frame_log import FrameLog
from service.responses.outcome import apply_upstream_result
from service.responses.service import get_response
from service.responses.status import RUNNING, Status
from service.responses.streaming import KEEPALIVE_FRAME, StreamAssembler, cut_error, sse_frame, terminal_frame
from service.responses.turn import INTERRUPTED_ERROR, RelayedEvents, Turn, TurnContext
from service.upstream.errors import UpstreamError

logger = logging.getLogger("service.runner")

CANCELLED = "cancelled"
SHUTDOWN = "shutdown"
DISCONNECTED = "disconnected"
_STOP_WAIT_SECONDS = 10.0
INTERNAL_ERROR = {"code": "server_error", "message": "An internal error stopped the turn before its answer was stored"}


class TurnRun:
    """One running turn: its event frames so far and the signals its followers wait on."""

    def __init__(self, turn: Turn, keepalive_seconds: float) -> None:
        self.turn = turn
        self._keepalive_seconds = keepalive_seconds
        self.frames = FrameLog()
        self.finished = False
        self.started = False
        self.storing = False
        self.store_attempted = False  # finish or fail was called: the outcome is the turn's to store from then on
        self.opened = False
        self.open_error: ServiceError | None = None
        self.stop_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        # Futures, not asyncio.Events: each Event carries a deque of its own, and a worker holds a run per
        # stream. `_wakeup` exists only while a follower waits for the next frame.
        self._loop = asyncio.get_running_loop()
        self._opened_or_finished: asyncio.Future[None] = self._loop.create_future()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._wakeup: asyncio.Future[None] | None = None
        # Keep-alives: one timer per run that fires after keepalive_seconds without a frame, rather than a
        # timeout around every follower's every wait (with many streams, that timer churn was a visible share of
        # the relay's CPU).
        self._last_frame_at = self._loop.time()
        self.keepalives = 0
        self._quiet_timer = self._loop.call_later(keepalive_seconds, self._on_quiet)

    @property
    def response_id(self) -> str:
        return self.turn.state.id

    def publish(self, event: dict[str, Any]) -> None:
        event["sequence_number"] = len(self.frames)
        self.publish_frame(sse_frame(event))

    def publish_frame(self, frame: bytes) -> None:
        self.frames.append(frame)
        self._last_frame_at = self._loop.time()
        self._wake()

    def _on_quiet(self) -> None:
        if self.finished:
            return
        quiet_until = self._last_frame_at + self._keepalive_seconds
        if self._loop.time() >= quiet_until:
            self.keepalives += 1
            self._last_frame_at = self._loop.time()
            self._wake()
            quiet_until = self._last_frame_at + self._keepalive_seconds
        self._quiet_timer = self._loop.call_at(quiet_until, self._on_quiet)

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def mark_opened(self) -> None:
        self.opened = True
        _resolve(self._opened_or_finished)

    def mark_done(self) -> None:
        _resolve(self._done)

    def mark_finished(self) -> None:
        self.finished = True
        self._quiet_timer.cancel()
        _resolve(self._opened_or_finished)
        self._wake()

    async def wait_opened(self) -> None:
        """Returns once the upstream stream started; raises the turn's error if it never did."""
        await asyncio.shield(self._opened_or_finished)
        if not self.opened and self.open_error is not None:
            raise self.open_error

    async def wait_done(self) -> None:
        await asyncio.shield(self._done)

    async def packed_stream(self) -> bytes:
        """Every frame of the run, once it has ended, packed (the answer kept for a store=false stream's key)."""
        await self.wait_done()
        return self.frames.packed(len(self.frames), b"")

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """The frames after sequence number `after`, then each new one as it is published, until the end."""
        position = max(after + 1, 0)
        keepalives = self.keepalives
        while True:
            end = len(self.frames)
            if position < end:
                # Whatever piled up goes out as one chunk: fewer writes for a client that fell behind.
                yield self.frames.joined(position)
                position = end
                continue
            if self.finished:
                return
            if keepalives != self.keepalives:
                # The upstream may think for minutes before its first token: a comment keeps proxies from
                # closing an idle connection (SSE clients, the openai SDK included, skip comments).
                keepalives = self.keepalives
                yield KEEPALIVE_FRAME
                continue
            if self._wakeup is None:
                self._wakeup = self._loop.create_future()
            # Shielded: a follower that leaves must not cancel the future the other followers wait on.
            await asyncio.shield(self._wakeup)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TurnRunner:
    """The registry of runs in this process, held on the Runtime."""

    def __init__(self, settings: Settings, turns: TurnContext) -> None:
        self._settings = settings
        self._turns = turns
        self._upstream = turns.upstream
        self._runs: dict[str, TurnRun] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def start(self, turn: Turn) -> TurnRun:
        run = TurnRun(turn, self._settings.sse_keepalive_seconds)
        observe_turns.run_started(turn)
        self._runs[run.response_id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"turn-{run.response_id}")
        return run

    def get(self, tenant_id: str, response_id: str) -> TurnRun | None:
        run = self._runs.get(response_id)
        return run if run is not None and run.turn.tenant_id == tenant_id else None

    def running(self, response_id: str) -> TurnRun | None:
        """The run of that response in this process, whoever asks (another process, through the bus)."""
        return self._runs.get(response_id)

    def stop(self, run: TurnRun, reason: str) -> None:
        """Ask a run to stop; it stores what it has (cancelled, or failed on shutdown) and ends its stream."""
        if run.finished or run.storing or run.stop_reason is not None:
            return
        run.stop_reason = reason
        if run.started and run.task is not None:
            run.task.cancel()

    async def cancel(self, run: TurnRun) -> None:
        self.stop(run, CANCELLED)
        await asyncio.shield(run.wait_done())

    def follower_left(self, run: TurnRun) -> None:
        """The client of the request that started the run disconnected before the end."""
        if self._settings.stream_disconnect_policy == "cancel" and not run.turn.request.background:
            self.stop(run, DISCONNECTED)

    async def shutdown(self, grace: float) -> None:
        """Let running turns finish for `grace` seconds, then stop the rest (stored as failed)."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if not tasks:
            return
        logger.info("waiting up to %.0fs for %d running turn(s)", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        # As stop_plain_turns says of non-streamed ones: the operator learns why these turns were stored failed.
        logger.warning(
            "stopped %d streamed or background turn(s) still running at the end of the grace period", len(pending)
        )
        for run in list(self._runs.values()):
            self.stop(run, SHUTDOWN)
        _, still = await asyncio.wait(pending, timeout=_STOP_WAIT_SECONDS)
        if still:
            logger.warning("%d turn(s) did not stop in time; the reaper will mark them failed", len(still))

    # -- one run ------------------------------------------------------------------------------------------
    async def _drive(self, run: TurnRun) -> None:
        run.started = True
        assembler = StreamAssembler()
        opening = run.turn.state.render()
        if run.turn.request.background:  # as its create answer said: queued until this run started
            queued = {**opening, "status": Status.QUEUED}
            run.publish({"type": "response.created", "response": queued})
            run.publish({"type": "response.queued", "response": queued})
        else:
            run.publish({"type": "response.created", "response": opening})
        run.publish({"type": "response.in_progress", "response": opening})
        try:
            status, error = await self._relay(run, assembler)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status, error = self._stopped_outcome(run)
        run.storing = True
        try:
            for event in assembler.close(status):
                run.publish(event)
            run.publish_frame(await self._store(run, assembler, status, error))
        except Exception:
            logger.exception("turn %s could not finish cleanly", run.response_id)
            if not run.store_attempted:
                # Left so, the turn would stay in_progress and its conversation claimed for as long as this process
                # lives (its heartbeat renews the claims of the turns it runs): stored as failed, and said so.
                run.store_attempted = True
                await self._turns.fail(run.turn, INTERNAL_ERROR)
                run.publish_frame(terminal_frame(run.turn.state.render(), len(run.frames)))
        finally:
            if not run.opened and run.open_error is None:
                run.open_error = ServiceError(
                    "The turn ended before the upstream answered", status_code=502, code="upstream_error"
                )
            run.mark_finished()
            observe_turns.run_ended(run.turn.request)
            self._runs.pop(run.response_id, None)
            run.mark_done()

    def _stopped_outcome(self, run: TurnRun) -> tuple[str, dict[str, Any] | None]:
        if run.stop_reason in {CANCELLED, DISCONNECTED}:
            return Status.CANCELLED, None
        if not run.opened:
            run.open_error = ServiceError(
                "The service is shutting down; the turn was not started", status_code=503, code="service_unavailable"
            )
        return Status.FAILED, INTERRUPTED_ERROR

    async def _relay(self, run: TurnRun, assembler: StreamAssembler) -> tuple[str, dict[str, Any] | None]:
        if run.stop_reason is not None:  # stopped before the task first ran
            raise asyncio.CancelledError
        try:
            # Always streamed upstream, also for background turns: a cancel or a cut keeps what was generated.
            async with self._turns.windows.open_stream(self._upstream, run.turn) as stream:
                run.mark_opened()
                async for event in stream.events():
                    for out in assembler.feed(event):
                        run.publish(out)
                    if assembler.ended:
                        break
        except UpstreamError as exc:
            if not run.opened:
                run.open_error = exc
                return Status.FAILED, exc.response_error()
            return Status.FAILED, cut_error(exc.message)
        except Exception:
            logger.exception("turn %s: unexpected error while relaying the stream", run.response_id)
            return Status.FAILED, cut_error("an internal error stopped the relay")
        return assembler.outcome()

    async def _store(
        self, run: TurnRun, assembler: StreamAssembler, status: str, error: dict[str, Any] | None
    ) -> bytes:
        """Store the outcome; returns the terminal event's frame, rendered from the stored state."""
        turn = run.turn
        outputs = apply_upstream_result(turn.state, assembler.result(status, error))
        # Every event but the terminal one is published by now. A store that finishes after the database came
        # back runs when this stream has already ended (with its own terminal event), so the log holds the
        # frames up to this sequence number, not the frames as they are then.
        sequence_number = len(run.frames)
        events = RelayedEvents(run.frames, sequence_number) if turn.request.stream else None
        run.store_attempted = True
        try:
            if status == Status.FAILED:
                await self._turns.fail(turn, error or INTERRUPTED_ERROR, outputs, events=events)
            else:
                await self._turns.finish(turn, outputs, upstream_id=assembler.upstream_id, events=events)
        except ServiceUnavailable as exc:
            # The database is down: finish keeps the outcome and stores it once the database is back. The
            # state must stay as it is for that store; only this stream is told, with an event of its own.
            unstored = replace(turn.state, status=Status.FAILED.value, error={"code": exc.code, "message": exc.message})
            return terminal_frame(unstored.render(), sequence_number)
        except ServiceError:
            pass  # refused for good: finish stored the turn as failed and logged why; the stream ends as stored
        except Exception:
            logger.exception("could not store streamed turn %s; the reaper will finish it", turn.state.id)
            turn.state.status = Status.FAILED.value
            turn.state.error = {"code": "server_error", "message": "The response could not be stored"}
        return terminal_frame(turn.state.render(), sequence_number)


async def cancel_response(
    engine: AsyncEngine, runner: TurnRunner, bus: Bus, tenant_id: str, response_id: str
) -> dict[str, Any]:
    """Stop a background response: it ends `cancelled`, keeping the output generated so far (not appended to its
    conversation). Cancelling a response that already ended answers it unchanged. A response run by another
    process is cancelled there, through the bus."""
    run = runner.get(tenant_id, response_id)
    background = run.turn.request.background if run is not None else None
    if run is None:
        state = await get_response(engine, tenant_id, response_id)
        background = state.background
    if not background:
        raise InvalidRequest(
            "Only responses created with background=true can be cancelled", param="response_id", code="not_cancellable"
        )
    if run is not None:
        await runner.cancel(run)
        return run.turn.state.render()
    if state.status in RUNNING:
        ended = await cancel_elsewhere(engine, bus, tenant_id, response_id)
        if ended is None:
            raise Conflict(
                f"Response '{response_id}' is running in another process of the service, which did not answer the "
                "cancel; retry it (if that process is gone, its turns are failed within PROCESS_HEARTBEAT_TIMEOUT)",
                code="response_running_elsewhere",
            )
        return ended.render()
    return state.render()
