"""Test setup: a real PostgreSQL (TEST_DATABASE_URL, else an embedded server), migrated once per run through
alembic; the service running on a real socket; a fake OpenRouter on another. Each test starts from empty tables.

TEST_DATABASE_URL's database is wiped (schema `public` dropped and recreated) at the start of the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.app import create_app
from service.config import Settings, normalize_database_url
from service.db.models import Base
from service.keys import service as keys
from service.limits.connections import guarded_protocol, uvicorn_options
from service.migrate import upgrade
from tests.fake_openrouter import FakeOpenRouter, free_port, wait_for_port
from tests.hang_report import REPORT_AFTER_SECONDS, ReportedServer, report
from tests.reliability_support import ServiceProcess

# TRUNCATE locks these in this order. The webhook outbox comes after `response`: a process still storing a
# background turn's outcome holds `response` and then writes the outbox from a trigger, so locking the outbox
# first would deadlock with it.
TABLES = (
    "console_session_end",
    "retention_policy",
    "maintenance_lease",
    "response_live_frame",
    "service_process",
    "running_chain_turn",
    "service_secret",
    "idempotency_key",
    "response_event_log",
    "response_chain",
    "deleted_item_position",
    "item",
    "response",
    "conversation",
    "api_key",
    "tenant",
    "webhook_attempt",
    "webhook_delivery",
    "webhook_endpoint",
)
# A table left out would carry one test's rows into the next.
assert set(TABLES) == set(Base.metadata.tables), set(Base.metadata.tables) ^ set(TABLES)


_RUNTIME_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """One XDG_RUNTIME_DIR for the whole run, removed at its end. Unset, the first embedded PostgreSQL started in
    this process points it at its own data directory (service/db/embedded.py), which the tests remove after use;
    the servers started later (their lock file) and chromium (its settings) would write there again."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        config.stash[_RUNTIME_DIR] = Path(tempfile.mkdtemp(prefix="convstore-test-runtime-"))
        os.environ["XDG_RUNTIME_DIR"] = str(config.stash[_RUNTIME_DIR])


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUNTIME_DIR in config.stash:
        shutil.rmtree(config.stash[_RUNTIME_DIR], ignore_errors=True)


async def _reset_schema(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


async def _create_database(server_url: str, name: str) -> None:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not exists:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        url = normalize_database_url(configured)
        asyncio.run(_reset_schema(url))
        upgrade(url)
        yield url
        return
    from service.db.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="convstore-test-"))
    server = EmbeddedPostgres(data_dir)
    try:
        server_url = server.start()
        asyncio.run(_create_database(server_url, "convstore_test"))
        url = make_url(server_url).set(database="convstore_test").render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenRouter]:
    fake = FakeOpenRouter()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def base_settings(database_url: str, fake_upstream: FakeOpenRouter) -> Settings:
    return Settings(
        database_url=database_url,
        openrouter_api_key="sk-or-test-secret-key",
        openrouter_base_url=fake_upstream.base_url,
        openrouter_app_url="https://example.test/app",
        openrouter_app_title="Conversation store tests",
        admin_api_key="admin-test-secret",
        upstream_retry_base_delay=0.02,
        upstream_retry_max_wait=1.0,
        upstream_total_timeout=20.0,
        db_pool_size=5,
        # Rates off: tests send bursts; tests/test_limits.py turns them on where it checks them.
        tenant_requests_per_second=0,
        # Only the tests that start a server for it deliver webhooks, to receivers on loopback.
        webhook_delivery=False,
        webhook_allow_private_addresses=True,
    )


class LiveServer:
    """The service on a real loopback port, in its own thread and event loop (uvicorn's `loop`: uvloop where
    installed, as when served, or "asyncio", whose lookups go through socket.getaddrinfo)."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        loop: str = "auto",
        **app_options: Any,
    ) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, upstream_transport=transport, **app_options)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop=loop,
            **uvicorn_options(settings, protocol=guarded_protocol(settings)),
        )
        self._server = ReportedServer(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            # It goes on in the background, writing to the database under later tests: shown, not hidden.
            warnings.warn(f"the live server on port {self.port} did not stop within 15 s", stacklevel=1)


@pytest.fixture(scope="session")
def server(base_settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(base_settings).start()
    yield live
    live.stop()


@pytest.fixture
def start_server(base_settings: Settings) -> Iterator[Callable[..., LiveServer]]:
    """Start another instance with some settings changed: start_server(upstream_max_attempts=1)."""
    started: list[LiveServer] = []

    def start(transport: httpx.AsyncBaseTransport | None = None, *, loop: str = "auto", **overrides: Any) -> LiveServer:
        live = LiveServer(dataclasses.replace(base_settings, **overrides), transport, loop=loop).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def service_processes(database_url: str, fake_upstream: FakeOpenRouter) -> Iterator[Callable[..., ServiceProcess]]:
    """Start `python -m service serve` as its own OS process, with these environment variables set; stopped (or
    already killed) at the end of the test."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        process = ServiceProcess(database_url, fake_upstream.base_url, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


_CONNECT_SECONDS = 15
_CONNECT_ATTEMPTS = 3


def _thread_stacks() -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "".join(
        f"-- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame, limit=8))
        for ident, frame in sys._current_frames().items()
    )


def _retry_connects_that_get_no_answer(engine: AsyncEngine) -> None:
    """The tests' own engine opens a connection per use. Twice, on a loaded CI machine, one of those connects got
    no answer for asyncpg's whole 60 s and failed a test that had nothing to do with it. A connect without an answer
    is tried again, with a warning (shown in the run's summary) so that a recurrence is seen, not hidden."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.setdefault("timeout", _CONNECT_SECONDS)
        for attempt in range(1, _CONNECT_ATTEMPTS):
            # Half-way through the wait, what every thread does: the test's own thread blocked outside its event
            # loop means the answer may have come and not been read; waiting in select() means none came.
            halfway: list[str] = []
            timer = threading.Timer(_CONNECT_SECONDS / 2, lambda seen=halfway: seen.append(_thread_stacks()))
            timer.daemon = True
            timer.start()
            try:
                return dialect.connect(*cargs, **cparams)
            except TimeoutError:
                warnings.warn(
                    f"the tests' engine: connect attempt {attempt} got no answer in {_CONNECT_SECONDS} s; trying "
                    f"again. Threads half-way through the wait:\n{''.join(halfway)}",
                    stacklevel=1,
                )
            finally:
                timer.cancel()
        return dialect.connect(*cargs, **cparams)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    _retry_connects_that_get_no_answer(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def _hang_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test (with its fixtures) still running after REPORT_AFTER_SECONDS prints what each task waits on."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(REPORT_AFTER_SECONDS, report, request.config, request.node.nodeid, loop)
    yield
    timer.cancel()


@pytest.fixture(autouse=True)
async def _isolation(_hang_report: None, db: AsyncEngine, fake_upstream: FakeOpenRouter) -> AsyncIterator[None]:
    fake_upstream.reset()
    yield
    fake_upstream.reset()
    # A statement still running in the live server (a heartbeat, a delivery, a turn stored late) may lock two of
    # these tables in another order: PostgreSQL then cancels one side, and the wipe is tried again.
    for attempt in range(5):
        try:
            async with db.begin() as conn:
                await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            return
        except DBAPIError as exc:
            if "deadlock detected" not in str(exc) or attempt == 4:
                raise
            await asyncio.sleep(0.1)


@dataclass
class Tenant:
    name: str
    key: str
    key_id: str
    http: httpx.AsyncClient
    base_url: str
    sdk_clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        # Closed by make_tenant: left to the garbage collector, the SDK's __del__ closes the client on whichever
        # thread's loop is running then, a live server's included, from outside the test's loop.
        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(api_key=self.key, base_url=self.base_url + "/v1", **kwargs)
        self.sdk_clients.append(client)
        return client


@pytest.fixture
async def make_tenant(server: LiveServer, db: AsyncEngine) -> AsyncIterator[Callable[..., Awaitable[Tenant]]]:
    tenants: list[Tenant] = []

    async def make(name: str, *, admin: bool = False, live: LiveServer | None = None) -> Tenant:
        target = live or server
        created = await keys.create_key(db, tenant=name, is_admin=admin)
        client = httpx.AsyncClient(
            base_url=target.url, headers={"Authorization": f"Bearer {created.secret}"}, timeout=30
        )
        tenants.append(Tenant(name, created.secret, created.id, client, target.url))
        return tenants[-1]

    yield make
    for tenant in tenants:
        await tenant.http.aclose()
        for sdk in tenant.sdk_clients:
            await sdk.close()


@pytest.fixture
async def alice(make_tenant: Callable[..., Awaitable[Tenant]]) -> Tenant:
    return await make_tenant("alice")


@pytest.fixture
async def bob(make_tenant: Callable[..., Awaitable[Tenant]]) -> Tenant:
    return await make_tenant("bob")


@pytest.fixture
async def anonymous(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client
