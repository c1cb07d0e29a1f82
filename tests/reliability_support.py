"""Helpers for the reliability tests: polling, stored-row checks, the service as a real separate process, and a
proxy in front of PostgreSQL that loses the reply to one statement after the server has run it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.migrate import PROJECT_ROOT
from tests.fake_openrouter import free_port
from tests.stream_support import wait_until_ended
from tests.turn_support import MODEL, new_conversation, rows


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    async with db.connect() as conn:
        return await conn.scalar(text(sql), params)


async def execute(db: AsyncEngine, sql: str, **params: Any) -> None:
    async with db.begin() as conn:
        await conn.execute(text(sql), params)


async def claimed_by_a_lost_turn(tenant: Any, db: AsyncEngine, *, ttl: float, age: float) -> tuple[str, str]:
    """A conversation claimed by a background response stored as in_progress, as a process that died (or a turn
    that hung) leaves them: the claim taken `age` seconds ago by a process whose TURN_LOCK_TTL is `ttl`. Returns
    the conversation and the response."""
    conv = await new_conversation(tenant.http)
    created = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    response_id = created.json()["id"]
    await wait_until_ended(tenant.http, response_id)
    await execute(db, "UPDATE response SET status = 'in_progress', completed_at = NULL WHERE id = :r", r=response_id)
    await execute(
        db,
        "UPDATE conversation SET turn_response_id = :r,"
        " turn_expires_at = now() + make_interval(secs => CAST(:ttl AS float8) - CAST(:age AS float8)),"
        " turn_claimed_at = now() - make_interval(secs => :age) WHERE id = :c",
        r=response_id,
        c=conv,
        ttl=ttl,
        age=age,
    )
    return conv, response_id


async def requests_waiting_on_a_lock(db: AsyncEngine) -> int:
    """How many of the service's database sessions wait on a row lock (a test holds one to pause a request); only
    this database's, as another run on the same server has its own."""
    count = await scalar(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'convstore' AND wait_event_type = 'Lock'"
        " AND datname = current_database()",
    )
    return int(count or 0)


async def a_dead_turns_running_child_note(db: AsyncEngine, previous_id: str, *, expires_in: float) -> None:
    """What a plain turn continuing `previous_id` leaves when its process dies before its finish: its note as
    that response's running child (service/db/models.py, RunningChainTurn), expiring in `expires_in` seconds."""
    await execute(
        db,
        "INSERT INTO running_chain_turn (response_id, previous_response_id, expires_at)"
        " VALUES ('resp_of_a_dead_process', :previous, now() + make_interval(secs => :seconds))",
        previous=previous_id,
        seconds=expires_in,
    )


async def a_request_waits_on_a_lock(db: AsyncEngine) -> None:
    async def waiting() -> bool:
        return await requests_waiting_on_a_lock(db) > 0

    await eventually(waiting)


async def assert_whole_turns(db: AsyncEngine, conversation_id: str) -> list[dict[str, Any]]:
    """Positions are 0..n-1, and each completed turn's inputs then outputs sit together, in order, exactly once;
    a failed turn appended nothing. Returns the completed responses, oldest first."""
    items = await rows(
        db,
        "SELECT position, response_id, is_output, ordinal FROM item WHERE conversation_id = :c ORDER BY position",
        c=conversation_id,
    )
    assert [i["position"] for i in items] == list(range(len(items)))
    responses = await rows(
        db,
        "SELECT id, status, conversation_position FROM response WHERE conversation_id = :c "
        "ORDER BY conversation_position, created_at",
        c=conversation_id,
    )
    by_response: dict[str, list[tuple[bool, int]]] = {}
    order: list[str] = []
    for item in items:
        rid = item["response_id"]
        if rid is None:
            continue
        if rid not in by_response:
            order.append(rid)
            by_response[rid] = []
        elif order[-1] != rid:
            raise AssertionError(f"items of {rid} are interleaved with another turn's")
        by_response[rid].append((item["is_output"], item["ordinal"]))
    for rid, keys in by_response.items():
        assert keys == sorted(keys), f"items of {rid} out of order"
    completed = [r for r in responses if r["status"] == "completed"]
    assert order == [r["id"] for r in completed], "completed turns and appended turns differ"
    for response in responses:
        assert response["status"] != "in_progress" or response["id"] not in by_response
        if response["status"] == "failed":
            assert response["id"] not in by_response
    return completed


class ServiceProcess:
    """`python -m service serve` as its own OS process on a loopback port."""

    def __init__(self, database_url: str, upstream_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="convstore-proc-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "AUTO_MIGRATE": "false",
            "OPENROUTER_API_KEY": "x",
            "OPENROUTER_BASE_URL": upstream_url,
            "UPSTREAM_RETRY_BASE_DELAY": "0.02",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start_without_waiting(self) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.start_without_waiting()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service process exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service process not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no cleanup, like a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def client_for(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


class ReplyLosingProxy:
    """A TCP proxy in front of PostgreSQL that, once, lets a message through and loses the server's reply: the
    first client message containing `marker` reaches the server, which runs (and commits) it; what the server
    answers, up to its ReadyForQuery, is dropped and both sides are closed. The client sees a connection lost
    with no way to tell whether its statement committed."""

    _READY_FOR_QUERY = b"Z\x00\x00\x00\x05"

    def __init__(self, database_url: str, marker: bytes) -> None:
        self._database = make_url(database_url)
        self._marker = marker
        self.port = 0
        self.replies_lost = 0
        self._server: asyncio.Server | None = None
        self._armed = True
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ReplyLosingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the proxy and every connection through it. Left open, they would be relayed by this (the test's)
        event loop, which waits in the live server's teardown: the server's shutdown would then wait on its
        database until that teardown gave up on it."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        # From Python 3.12.1 on, wait_closed() waits for every connection the server accepted: those are closing now.
        await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def url(self) -> str:
        """The database URL through the proxy."""
        query = {k: v for k, v in self._database.query.items() if k != "host"}
        through = self._database.set(host="127.0.0.1", port=self.port, query=query)
        return through.render_as_string(hide_password=False)

    async def _open_database(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = self._database.port or 5432
        socket_dir = self._database.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):  # the embedded server listens on a socket
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(self._database.host or "127.0.0.1", port)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)  # before the first await: stop() closes it whatever happens next
        server_reader, server_writer = await self._open_database()
        self._writers.add(server_writer)
        losing = asyncio.Event()

        async def to_server() -> None:
            while data := await client_reader.read(65536):
                if self._armed and self._marker in data:
                    self._armed = False
                    losing.set()
                server_writer.write(data)
                await server_writer.drain()

        async def to_client() -> None:
            while data := await server_reader.read(65536):
                if not losing.is_set():
                    client_writer.write(data)
                    await client_writer.drain()
                elif self._READY_FOR_QUERY in data:
                    self.replies_lost += 1
                    return

        tasks = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            client_writer.close()
            server_writer.close()
            self._writers.difference_update((client_writer, server_writer))
