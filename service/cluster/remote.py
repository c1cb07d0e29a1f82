"""Asking the process that runs a turn to do something with it, and waiting for the database to show it."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.bus import CANCEL, Bus
from service.responses.service import get_response
from service.responses.status import RUNNING
from service.responses.views import ResponseState

# How long a cancel waits for the process running the turn to store it cancelled: a run stops at once and
# stores in one statement, so this is only reached when that process is gone (the heartbeat then fails it).
CANCEL_WAIT_SECONDS = 10.0
_RECHECK_SECONDS = 0.5


async def cancel_elsewhere(engine: AsyncEngine, bus: Bus, tenant_id: str, response_id: str) -> ResponseState | None:
    """Ask whichever process runs the response to cancel it; its stored state once it ended, None when it still
    runs after CANCEL_WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_WAIT_SECONDS
    with bus.watch(response_id) as changed:
        await bus.send(CANCEL, response_id)
        while True:
            changed.clear()
            state = await get_response(engine, tenant_id, response_id)
            if state.status not in RUNNING:
                return state
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_RECHECK_SECONDS, remaining)):
                    await changed.wait()
