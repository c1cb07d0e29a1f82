"""Events between service processes, through PostgreSQL's LISTEN/NOTIFY: one listening connection per process
(not per stream), opened directly on the database (DATABASE_DIRECT_URL: a pooler in transaction mode cannot
carry LISTEN), and notifications sent on any pooled connection.

Messages are `<kind> <response id>`:
- `cancel`: the process running that turn stops it (stored as cancelled);
- `follow`: the process running that turn starts copying its frames to the live frames table
  (service/cluster/live_frames.py), for a reader in another process;
- `changed`: a turn's frames or outcome changed; wakes readers waiting on it here.

A notification only wakes; what it is about is read from the database. So a missed one (the listening
connection dropped and is being reopened) costs a reader at most one wait before it reads again, never an event.

The listening connection also holds the process's liveness lock (an advisory lock, service/cluster/repository.py):
the server frees it when the session ends, at once for a killed process, and within `keepalive_seconds` or so
for a lost host, through TCP keepalives asked of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.observability.outages import FailingLoop

logger = logging.getLogger("service.cluster")

CHANNEL = "convstore_events"
CANCEL = "cancel"
FOLLOW = "follow"
CHANGED = "changed"
_RECONNECT_SECONDS = 1.0
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")

Handler = Callable[[str], None]


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """postgresql+asyncpg://… as asyncpg itself takes it."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Bus:
    def __init__(
        self, engine: AsyncEngine, direct_url: str, *, liveness_key: int | None = None, keepalive_seconds: float = 10
    ) -> None:
        self._engine = engine
        self._dsn = asyncpg_dsn(direct_url)
        self._liveness_key = liveness_key
        probe = max(1, int(keepalive_seconds / 4))
        self._server_settings = {
            "application_name": "convstore-listen",
            "tcp_keepalives_idle": str(probe),
            "tcp_keepalives_interval": str(probe),
            "tcp_keepalives_count": "3",
        }
        self._watches: dict[str, set[asyncio.Event]] = {}
        self._handlers: dict[str, Handler] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def on(self, kind: str, handler: Handler) -> None:
        """Call `handler(response_id)` for each `kind` message (sent by any process, this one included)."""
        self._handlers[kind] = handler

    async def start(self, *, wait: float = 0.0) -> None:
        """Starts listening; `wait`: how long to wait for the listening connection. By default none: startup
        must not hang on the database (a message sent meanwhile is made up for by the readers' rechecks)."""
        self._task = asyncio.create_task(self._listen_forever(), name="bus-listener")
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._listening.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def send(self, kind: str, response_id: str) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": f"{kind} {response_id}"})
            await conn.commit()

    @contextlib.contextmanager
    def watch(self, response_id: str) -> Iterator[asyncio.Event]:
        """An event set by every `changed` message for the response while the block runs (and whenever the
        listening connection was reopened: messages may have been missed). Clear it before reading the
        database, then wait on it: a message sent in between is not lost."""
        changed = asyncio.Event()
        self._watches.setdefault(response_id, set()).add(changed)
        try:
            yield changed
        finally:
            watching = self._watches.get(response_id)
            if watching is not None:
                watching.discard(changed)
                if not watching:
                    del self._watches[response_id]

    def _deliver(self, payload: str) -> None:
        kind, _, response_id = payload.partition(" ")
        if kind == CHANGED:
            for changed in self._watches.get(response_id, ()):
                changed.set()
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            try:
                handler(response_id)
            except Exception:
                logger.exception("bus: handling %r failed", payload)

    def _wake_all(self) -> None:
        for watching in self._watches.values():
            for changed in watching:
                changed.set()

    async def _listen_forever(self) -> None:
        failing = FailingLoop(logger, "bus: listening")
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5, server_settings=self._server_settings)
                if self._liveness_key is not None:
                    await conn.execute("SELECT pg_advisory_lock($1)", self._liveness_key)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                def on_lost(_conn: Any, lost: asyncio.Future[None] = lost) -> None:
                    if not lost.done():
                        lost.set_result(None)

                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: self._deliver(payload))
                self._listening.set()
                failing.worked()
                # Whatever was sent while no connection listened is read from the database by the waiters.
                self._wake_all()
                await lost
                failing.failed("the listening connection was lost; reopening it")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failing.failed(type(exc).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            self._listening.clear()
            self._wake_all()
            await asyncio.sleep(_RECONNECT_SECONDS)
