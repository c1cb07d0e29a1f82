"""This process as one of many: its heartbeat, its share of the expiry sweep, its end of the bus, and the
answers it gives other processes about the turns it runs (cancel one, copy one's frames for a reader
elsewhere)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import expiry
from service.cluster.bus import CANCEL, CHANGED, FOLLOW, Bus
from service.cluster.heartbeat import Heartbeat
from service.cluster.live_frames import Mirrors
from service.config import Settings
from service.responses.runner import TurnRunner

logger = logging.getLogger("service.cluster")


class ClusterNode:
    def __init__(self, settings: Settings, engine: AsyncEngine, runner: TurnRunner, *, direct_url: str) -> None:
        self.heartbeat = Heartbeat(
            engine, timeout=settings.process_heartbeat_timeout, turn_lock_ttl=settings.turn_lock_ttl
        )
        self.bus = Bus(
            engine,
            direct_url,
            liveness_key=self.heartbeat.identity.liveness_key,
            keepalive_seconds=settings.process_heartbeat_timeout,
        )
        self._mirrors = Mirrors(engine)
        self._engine = engine
        self._turn_lock_ttl = settings.turn_lock_ttl
        self._runner = runner
        self._tasks: set[asyncio.Task[None]] = set()
        self.bus.on(CANCEL, self._cancel_here)
        self.bus.on(FOLLOW, self._copy_frames_here)

    async def start(self) -> None:
        await self.bus.start()
        self._spawn(self.heartbeat.run_forever())
        self._spawn(
            expiry.sweep_forever(self._engine, turn_lock_ttl=self._turn_lock_ttl, holder=self.heartbeat.identity.id)
        )

    async def stop(self) -> None:
        """After the runner's shutdown: turns still listed are failed by the other processes."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._mirrors.stop()
        await self.heartbeat.stop()
        await self.bus.stop()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_here(self, response_id: str) -> None:
        run = self._runner.running(response_id)
        if run is None or not run.turn.request.background:
            return

        async def cancel() -> None:
            await self._runner.cancel(run)
            await self.bus.send(CHANGED, response_id)

        self._spawn(cancel())

    def _copy_frames_here(self, response_id: str) -> None:
        run = self._runner.running(response_id)
        if run is not None:
            self._mirrors.start(response_id, run.frames, run.follow(-1))
