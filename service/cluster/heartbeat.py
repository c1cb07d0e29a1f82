"""The heartbeat: every process writes, every PROCESS_HEARTBEAT_TIMEOUT / 4 seconds, that it is alive and which
turns it runs, and renews what those turns and its keyed requests hold (a claim, a key) before TURN_LOCK_TTL
runs out; then it looks for processes whose heartbeat is older than the timeout and fails their turns and
frees their conversations. So a process that dies (SIGKILL, a lost host) holds its conversations for about the
timeout, not for TURN_LOCK_TTL, while a live turn is never taken for dead however slowly its upstream answers:
its process lists it at every heartbeat. A process whose heartbeats are late but which still holds its liveness
lock (service/cluster/bus.py) is slow, not dead: its turns are left to finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import repository, running
from service.idempotency import repository as idempotency_keys
from service.migrate import head_revision
from service.observability import turns as observe_turns
from service.observability.outages import FailingLoop
from service.threads import repository as threads

logger = logging.getLogger("service.cluster")

PROCESS_STOPPED_ERROR = {
    "code": "server_error",
    "message": "The service process running this turn stopped before the turn finished",
}


def new_identity() -> repository.Identity:
    return repository.Identity(
        id=f"proc_{uuid.uuid4().hex}",
        host=socket.gethostname(),
        pid=os.getpid(),
        liveness_key=secrets.randbits(62),
        code_revision=head_revision(),
    )


class Heartbeat:
    def __init__(self, engine: AsyncEngine, *, timeout: float, turn_lock_ttl: float) -> None:
        self.identity = new_identity()
        self._engine = engine
        self._timeout = timeout
        self._ttl = turn_lock_ttl
        self.interval = timeout / 4

    async def beat(self) -> None:
        responses, conversations = running.snapshot(self._engine)
        async with self._engine.begin() as conn:
            taken_for_dead = await repository.beat(
                conn,
                self.identity,
                heartbeat_timeout=self._timeout,
                turn_lock_ttl=self._ttl,
                responses=responses,
                conversations=conversations,
                keys=running.held_keys(self._engine),
            )
        if taken_for_dead:
            logger.warning("this process missed its heartbeats for over %.0fs; its turns were failed", self._timeout)

    async def reap(self) -> list[str]:
        """Fail the turns of processes that stopped; returns the responses failed (or whose claim was freed)."""
        async with self._engine.begin() as conn:
            dead = await repository.mark_dead(conn)
            if not dead and not await repository.any_stopped(conn):
                return []
            failed = await repository.fail_orphaned_turns(conn, ttl=self._ttl, error=json.dumps(PROCESS_STOPPED_ERROR))
            # With their turns: a retry with the key of a turn just failed may run it again at once.
            released = await idempotency_keys.release_held_by(conn, dead)
        async with self._engine.begin() as conn:
            await repository.forget_ended_live_frames(conn)
        for process_id in dead:
            logger.warning("process %s stopped sending heartbeats; failing its turns", process_id)
        if released:
            logger.warning("released %d idempotency key(s) held by stopped processes", released)
        if failed:
            logger.warning("failed %d turn(s) of stopped processes: %s", len(failed), ", ".join(failed[:10]))
            observe_turns.turns_failed_for_their_process(len(failed))
        return failed

    async def fold_pending_chain_totals(self) -> None:
        """The chain turns that finished while their chain's row was held, and that no later finish added to the
        chain's totals (service/threads/totals.py): added now, so that they wait at most one heartbeat."""
        async with self._engine.begin() as conn:
            await threads.fold_pending_totals(conn)

    async def run_forever(self) -> None:
        failing = FailingLoop(logger, "heartbeat")
        while True:
            try:
                await self.beat()
                await self.reap()
                await self.fold_pending_chain_totals()
            except Exception as exc:
                failing.failed(type(exc).__name__)
            else:
                failing.worked()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """A clean stop: the turns still listed (shutdown could not store them) are failed by the others. The
        keys this process still holds belong to requests that ended without an answer (cut at shutdown): they
        are freed, as a dead process's are, so that a retry elsewhere need not wait for their held_until."""
        responses, conversations = running.snapshot(self._engine)
        try:
            async with self._engine.begin() as conn:
                await repository.stop(conn, self.identity, responses, conversations)
                await idempotency_keys.release_held_by(conn, [self.identity.id])
        except Exception as exc:
            logger.warning("could not record this process's stop: %s", type(exc).__name__)
