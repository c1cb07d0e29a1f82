"""Resuming a streamed response: `GET /v1/responses/{id}?stream=true&starting_after=N` replays every event after
sequence number N through the terminal one.

A run in this process is followed live from memory. A finished response is replayed from its stored event log.
A response still running in another process is followed live too: that process, asked through the bus, copies
its frames to the database and notifies each batch (service/cluster/live_frames.py). A streamed response whose
log was never written (its process died and the reaper failed it) is replayed from its stored state: whole to a
reader who has seen at most its opening events (those are the same however it is rebuilt), else its terminal
event alone, numbered after the last one the reader has. A response still running elsewhere is followed for as
long as it runs: it ends, or its process stops and the reaper fails it (a process's own TURN_LOCK_TTL says
nothing of another's turn).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import live_frames
from service.cluster.bus import FOLLOW, Bus
from service.errors import InvalidRequest, NotFound
from service.responses import event_repository, service
from service.responses.frame_log import inflated
from service.responses.runner import TurnRunner
from service.responses.status import RUNNING
from service.responses.streaming import KEEPALIVE_FRAME, events_from_state, opening_events, sse_frame

# A stored log is sent in slices of this many characters (SSE frames end with a blank line; a slice may end
# anywhere, the client reads a byte stream).
_SLICE_CHARS = 64 * 1024
_FRAME_END = "\n\n"
_FRAME_END_BYTES = _FRAME_END.encode()
# A notification only wakes a reader; without one it reads again after this (a missed notification costs this).
_RECHECK_SECONDS = 1.0
_KEEPALIVE_EVERY = 10  # quiet rechecks between two keep-alive comments


async def open_replay(
    engine: AsyncEngine,
    runner: TurnRunner,
    tenant_id: str,
    response_id: str,
    after: int,
    *,
    bus: Bus,
) -> AsyncIterator[bytes]:
    """Checks first (so a bad id is a plain HTTP error), then returns the stream of frames. Only a response created
    with stream=true has events to resume, whether it still runs, here or in another process, or has ended. A
    store=false response is not found, wherever it runs (no other process could find it)."""
    run = runner.get(tenant_id, response_id)
    if run is not None:
        if not run.turn.request.store:
            raise NotFound(f"Response with id '{response_id}' not found.")
        if not run.turn.request.stream:
            raise _not_streamed(response_id)
        return run.follow(after)
    async with engine.connect() as conn:
        row = await event_repository.stream_state(conn, tenant_id, response_id)
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.")
    if not row.stream:
        raise _not_streamed(response_id)
    stored = _stored_log_after(row, after)
    if stored is not None:
        return stored
    return _wait_then_replay(engine, runner, tenant_id, response_id, after, bus=bus)


def _not_streamed(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Response '{response_id}' was not created with stream=true, so it has no events to stream; "
        "retrieve it without stream=true",
        param="stream",
    )


def _stored_log_after(row: Any, after: int) -> AsyncIterator[bytes] | None:
    """The response's stored event log from the frame after `after` on; None when it has none."""
    if row.events_zlib is not None:
        return _packed_log_after(row.events_zlib, after)
    if row.events is not None:
        return _log_after(row.events, after)
    return None


async def _packed_log_after(packed: bytes, after: int) -> AsyncIterator[bytes]:
    """A packed log (the form written now) from the frame after `after` on, decompressed a slice at a time."""
    to_skip = max(after + 1, 0)
    carried = b""
    for piece in inflated(packed, _SLICE_CHARS):
        if not to_skip:
            yield piece
            continue
        text, start = carried + piece, 0
        while to_skip:
            end = text.find(_FRAME_END_BYTES, start)
            if end < 0:
                break
            start, to_skip = end + len(_FRAME_END_BYTES), to_skip - 1
        if to_skip:
            carried = text[max(start, len(text) - 1) :]  # a frame's end may span two slices
        elif start < len(text):
            yield text[start:]


async def _log_after(events: str, after: int) -> AsyncIterator[bytes]:
    """A log stored as text (before logs were packed) from the frame after `after` on, a slice at a time: the
    text read from the database is the only whole copy a reader holds, however long the log (split into frames
    and joined again, it was three)."""
    start = 0
    for _ in range(max(after + 1, 0)):
        end = events.find(_FRAME_END, start)
        if end < 0:
            return
        start = end + len(_FRAME_END)
    for offset in range(start, len(events), _SLICE_CHARS):
        yield events[offset : offset + _SLICE_CHARS].encode()


async def _wait_then_replay(
    engine: AsyncEngine,
    runner: TurnRunner,
    tenant_id: str,
    response_id: str,
    after: int,
    *,
    bus: Bus,
) -> AsyncIterator[bytes]:
    quiet = 0
    with bus.watch(response_id) as changed:
        # The process running the stream copies its frames to the database from now on (service/cluster).
        await bus.send(FOLLOW, response_id)
        while True:
            changed.clear()
            run = runner.get(tenant_id, response_id)
            if run is not None:
                async for chunk in run.follow(after):
                    yield chunk
                return
            async with engine.connect() as conn:
                row = await event_repository.stream_state(conn, tenant_id, response_id)
            if row is None:
                return  # deleted meanwhile
            stored = _stored_log_after(row, after)
            if stored is not None:
                async for chunk in stored:
                    yield chunk
                return
            chunk, after = await live_frames.frames_after(engine, response_id, after)
            if chunk:
                quiet = 0
                yield chunk
            if row.status not in RUNNING:
                state = await service.get_response(engine, tenant_id, response_id)
                yield _rebuilt_after(state.render(), after, state.model)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_RECHECK_SECONDS):
                    await changed.wait()
            if not changed.is_set():
                quiet += 1
                if quiet % _KEEPALIVE_EVERY == 0:
                    yield KEEPALIVE_FRAME
                    # Nothing for a while: the request to copy may have been missed (or sent before the run began).
                    await bus.send(FOLLOW, response_id)


def _rebuilt_after(response: dict[str, Any], after: int, asked_model: str | None) -> bytes:
    """A response's events after `after`, rebuilt from its stored state. The opening events are numbered alike
    however the stream is made (service/responses/streaming.py); past them the live numbering (one event per
    delta) and the rebuilt one differ, so a reader who has seen more than those gets the terminal event alone,
    numbered right after what it has."""
    events = events_from_state(response, asked_model)
    if after < len(opening_events(response)):
        return b"".join(sse_frame(event) for event in events[max(after + 1, 0) :])
    return sse_frame({**events[-1], "sequence_number": after + 1})
