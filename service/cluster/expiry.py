"""The safety net behind the heartbeat (heartbeat.py): claims, chain listings and notes of running chain turns
held past their TURN_LOCK_TTL, running responses older than it with no live claim, and idempotency keys past
their time.

One pass covers the whole database, whichever process runs it, and reads every conversation and chain to find
the claimed ones (nothing indexed marks a claim: an index on it would cost every claim its HOT update). So before
each pass a process takes the job's turn (repository.take_job_turn): however many processes share the database,
they make about one pass per interval between them, not one each.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import repository
from service.idempotency.service import purge_expired_keys
from service.observability.outages import FailingLoop
from service.responses.service import reap_stale_turns

logger = logging.getLogger("service.cluster")

JOB = "expiry"


def interval_for(turn_lock_ttl: float) -> float:
    """Passes come a quarter of the TTL apart, at least a second and at most a minute: an expired claim is freed
    that long after it expires, at the latest."""
    return min(60.0, max(1.0, turn_lock_ttl / 4))


async def sweep(engine: AsyncEngine, *, turn_lock_ttl: float, holder: str) -> bool:
    """One pass, if no process ran one in this process's interval; whether this process ran it."""
    async with engine.begin() as conn:
        mine = await repository.take_job_turn(conn, job=JOB, holder=holder, every=interval_for(turn_lock_ttl))
    if mine:
        await reap_stale_turns(engine, turn_lock_ttl)
        await purge_expired_keys(engine)
    return mine


async def sweep_forever(engine: AsyncEngine, *, turn_lock_ttl: float, holder: str) -> None:
    failing = FailingLoop(logger, "expiry pass")
    while True:
        try:
            await sweep(engine, turn_lock_ttl=turn_lock_ttl, holder=holder)
        except Exception as exc:
            failing.failed(type(exc).__name__)
        else:
            failing.worked()
        await asyncio.sleep(interval_for(turn_lock_ttl))
