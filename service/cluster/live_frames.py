"""A running stream's frames, copied to the database while another process follows it.

The process running a stream holds its frames in memory and stores them once, with the outcome. A reader in
another process (`GET /v1/responses/{id}?stream=true` there) asks, through the bus, for a copy: the running
process then writes the frames so far and every new batch to `response_live_frame`, notifying `changed` with each
write, until the run ends and its stored event log takes over. Only followed streams pay for this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.bus import CHANGED, CHANNEL
from service.responses.frame_log import FrameLog
from service.responses.streaming import split_frames

logger = logging.getLogger("service.cluster")

# The rows stay this long after the run ended, for readers that had not yet seen its stored log.
_KEEP_AFTER_END_SECONDS = 10.0

_APPEND = text(
    """
    WITH written AS (
        INSERT INTO response_live_frame (response_id, first_seq, frame_count, frames)
        VALUES (:response_id, :first_seq, :frame_count, :frames)
        ON CONFLICT DO NOTHING
    )
    SELECT pg_notify(:channel, :payload)
    """
)
_AFTER = text(
    "SELECT first_seq, frame_count, frames FROM response_live_frame"
    " WHERE response_id = :response_id AND first_seq + frame_count > :start ORDER BY first_seq"
)
_FORGET = text("DELETE FROM response_live_frame WHERE response_id = :response_id")


class Mirrors:
    """The copies this process is writing, one per followed run."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, response_id: str, frames: FrameLog, updates: AsyncIterator[bytes]) -> None:
        """`updates`: an async iterator that wakes on each new frame and ends with the run (run.follow)."""
        if response_id in self._tasks:
            return
        task = asyncio.create_task(self._mirror(response_id, frames, updates), name=f"mirror-{response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(response_id, None))

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _mirror(self, response_id: str, frames: FrameLog, updates: AsyncIterator[bytes]) -> None:
        written = 0
        try:
            async for _ in updates:
                written = await self._write(response_id, frames, written)
            await self._write(response_id, frames, written)
            await asyncio.sleep(_KEEP_AFTER_END_SECONDS)
            async with self._engine.begin() as conn:
                await conn.execute(_FORGET, {"response_id": response_id})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("live copy of %s stopped: %s", response_id, type(exc).__name__)

    async def _write(self, response_id: str, frames: FrameLog, written: int) -> int:
        end = len(frames)
        if end <= written:
            return written
        values = {
            "response_id": response_id,
            "first_seq": written,
            "frame_count": end - written,
            "frames": frames.joined(written, end).decode(),
            "channel": CHANNEL,
            "payload": f"{CHANGED} {response_id}",
        }
        async with self._engine.begin() as conn:
            await conn.execute(_APPEND, values)
        return end


async def frames_after(engine: AsyncEngine, response_id: str, after: int) -> tuple[bytes, int]:
    """The copied frames after sequence number `after`, joined, and the last sequence number they reach."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_AFTER, {"response_id": response_id, "start": after + 1})).all()
    chunks: list[bytes] = []
    for first_seq, frame_count, text_ in rows:
        if first_seq > after + 1:
            break  # a gap: a batch not yet visible; read again on the next wake-up
        chunks.extend(split_frames(text_)[after + 1 - first_seq :])
        after = first_seq + frame_count - 1
    return b"".join(chunks), after
