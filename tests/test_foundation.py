"""The foundation: health and readiness, API-key auth, the CLI, configuration errors, migrations."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.config import normalize_database_url
from service.migrate import alembic_config
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "OPENROUTER_API_KEY", "ADMIN_API_KEY", "TEST_DATABASE_URL", "PORT", "DATA_DIR"}
    }
    env.update(overrides)
    return env


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def plain_url(async_url: str) -> str:
    return async_url.replace("postgresql+asyncpg://", "postgresql://")


# -- health -------------------------------------------------------------------------------------------------


async def test_health_reports_upstream_mode(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.get("/health")
    assert answer.status_code == 200
    assert answer.json()["upstream"] == "openrouter"
    assert answer.json()["status"] == "ok"


async def test_ready_when_database_reachable(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.get("/ready")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ready", "database": "ok"}


async def test_ready_is_503_when_database_unreachable(start_server: Callable[..., LiveServer]) -> None:
    live = start_server(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health")).status_code == 200
        answer = await client.get("/ready")
    assert answer.status_code == 503
    assert answer.json()["status"] == "unavailable"


async def test_demo_upstream_answers_turns_without_a_key(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., object], fake_upstream: FakeOpenRouter
) -> None:
    live = start_server(openrouter_api_key=None)
    tenant = await make_tenant("demo", live=live)  # type: ignore[operator]
    health = (await tenant.http.get("/health")).json()
    assert health["upstream"] == "demo"
    assert "OPENROUTER_API_KEY" in health["note"]
    conv = (await tenant.http.post("/v1/conversations", json={})).json()
    first = await tenant.http.post("/v1/responses", json={"model": "m", "input": "ping", "conversation": conv["id"]})
    assert first.status_code == 200, first.text
    assert "You said: 'ping'" in first.json()["output"][0]["content"][0]["text"]
    second = await tenant.http.post("/v1/responses", json={"model": "m", "input": "pong", "conversation": conv["id"]})
    assert "3 item(s)" in second.json()["output"][0]["content"][0]["text"]
    assert fake_upstream.requests == []  # the demo upstream is in-process: nothing went to any network upstream


async def test_openapi_schema_and_docs_are_served(anonymous: httpx.AsyncClient) -> None:
    schema = await anonymous.get("/docs/openapi.json")
    assert schema.status_code == 200
    assert "/v1/responses" in schema.json()["paths"]
    assert (await anonymous.get("/docs")).status_code == 200


# -- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer sk-cs-not-a-real-key"])
async def test_v1_without_a_valid_key_is_401_envelope(anonymous: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    answer = await anonymous.post("/v1/conversations", json={}, headers=headers)
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    if header and "sk-cs" in header:
        assert "sk-cs-not-a-real-key" not in answer.text


async def test_admin_api_key_is_not_a_tenant_key(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.post("/v1/conversations", json={}, headers={"Authorization": "Bearer admin-test-secret"})
    assert answer.status_code == 403
    assert answer.json()["error"]["type"] == "permission_error"


async def test_keys_are_stored_only_as_sha256(alice: Tenant, db: AsyncEngine) -> None:
    async with db.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_key"))).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert bytes(row["key_hash"]) == hashlib.sha256(alice.key.encode()).digest()
    for value in row.values():
        assert alice.key not in str(value)


async def test_unknown_route_and_wrong_method_use_the_envelope(alice: Tenant) -> None:
    missing = await alice.http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await alice.http.put("/v1/conversations")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "invalid_request_error"


# -- CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [(), ("serve",), ("migrate",), ("keys",), ("keys", "create"), ("keys", "list"), ("keys", "revoke")]
)
def test_every_command_has_help(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


async def test_cli_keys_create_list_revoke(database_url: str, server: LiveServer) -> None:
    created = run_cli(
        "keys", "create", "--tenant", "cli-tenant", "--name", "laptop", DATABASE_URL=plain_url(database_url)
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-cs-") and " " not in secret
    auth = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/v1/conversations", json={}, headers=auth)).status_code == 200

        listing = run_cli("keys", "list", DATABASE_URL=plain_url(database_url))
        assert listing.returncode == 0, listing.stderr
        assert "cli-tenant" in listing.stdout and "laptop" in listing.stdout
        assert secret not in listing.stdout
        key_id = next(line.split()[0] for line in listing.stdout.splitlines() if "cli-tenant" in line)

        revoked = run_cli("keys", "revoke", key_id, DATABASE_URL=plain_url(database_url))
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked" in run_cli("keys", "list", DATABASE_URL=plain_url(database_url)).stdout

        # A fresh secret from the same CLI, revoked before first use, never authenticates.
        fresh = run_cli("keys", "create", "--tenant", "cli-tenant", DATABASE_URL=plain_url(database_url))
        fresh_secret = fresh.stdout.strip().splitlines()[-1]
        fresh_id = next(
            line.split()[0]
            for line in run_cli("keys", "list", DATABASE_URL=plain_url(database_url)).stdout.splitlines()
            if fresh_secret[:12] in line
        )
        run_cli("keys", "revoke", fresh_id, DATABASE_URL=plain_url(database_url))
        answer = await client.post("/v1/conversations", json={}, headers={"Authorization": f"Bearer {fresh_secret}"})
        assert answer.status_code == 401


def test_cli_admin_key_reaches_admin_flag(database_url: str, db: AsyncEngine) -> None:
    created = run_cli("keys", "create", "--tenant", "ops", "--admin", DATABASE_URL=plain_url(database_url))
    assert created.returncode == 0, created.stderr
    assert "admin key" in created.stdout
    listing = run_cli("keys", "list", "--tenant", "ops", DATABASE_URL=plain_url(database_url)).stdout
    assert " yes " in listing


def test_revoking_an_unknown_key_fails_cleanly(database_url: str) -> None:
    result = run_cli("keys", "revoke", "key_nope", DATABASE_URL=plain_url(database_url))
    assert result.returncode != 0
    assert "no key with id key_nope" in result.stderr
    assert "Traceback" not in result.stderr


# -- configuration errors: one clear line, no traceback ------------------------------------------------------------


def _busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    yield from _busy_port()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://root@localhost/db"}, "DATABASE_URL must start with postgresql://"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}, "cannot connect to the database"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432"}, "DATABASE_URL has no database name"),
        # A Unix socket is named by `?host=/dir` (the embedded server's URL, which the suite's first pass runs on).
        ({"DATABASE_URL": "postgresql://postgres@/convstore"}, "DATABASE_URL has no host"),
        ({"PORT": "eighty"}, "PORT must be a number"),
        ({"AUTO_MIGRATE": "maybe"}, "AUTO_MIGRATE must be true or false"),
        ({"HISTORY_CACHE_MB": "1.5"}, "HISTORY_CACHE_MB must be a whole number"),
        ({"SSE_KEEPALIVE_SECONDS": "0"}, "SSE_KEEPALIVE_SECONDS must be at least 0.05"),
        ({"DATA_DIR": "/etc/hostname/data"}, "DATA_DIR /etc/hostname/data is not writable"),
        # float() takes these, and no comparison refuses them.
        ({"PORT": "nan"}, "PORT must be a finite number"),
        ({"SHUTDOWN_GRACE_PERIOD": "nan"}, "SHUTDOWN_GRACE_PERIOD must be a finite number"),
        ({"UPSTREAM_TOTAL_TIMEOUT": "inf"}, "UPSTREAM_TOTAL_TIMEOUT must be a finite number"),
        ({"TURN_LOCK_TTL": "nan"}, "TURN_LOCK_TTL must be a finite number"),
        ({"PORT": "99999"}, "PORT must be at most 65535"),
        ({"PORT": "8123", "METRICS_PORT": "8123"}, "METRICS_PORT must differ from PORT"),
        ({"RETENTION_RESPONSES_DAYS": "3000000"}, "RETENTION_RESPONSES_DAYS must be at most 36500"),
        (
            {"OPENROUTER_BASE_URL": "http://user:SECRETPASSWORD@127.0.0.1:9/api/v1"},
            "OPENROUTER_BASE_URL must not carry a user or password",
        ),
    ],
)
def test_bad_configuration_fails_fast_with_one_line(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    env.setdefault("PORT", "0")
    result = run_cli("serve", timeout=60, **env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "SECRETPASSWORD" not in result.stderr + result.stdout


def test_libpqs_sslmode_is_taken_as_asyncpgs_ssl(database_url: str) -> None:
    """Operators write libpq's `sslmode`; asyncpg refused it as an unknown argument."""
    assert normalize_database_url("postgresql://u:p@db:5432/app?sslmode=require") == (
        "postgresql+asyncpg://u:p@db:5432/app?ssl=require"
    )
    assert normalize_database_url("postgresql://u@/app?host=/run/postgresql&sslmode=disable").endswith(
        "?host=/run/postgresql&ssl=disable"
    )
    result = run_cli("keys", "list", DATABASE_URL=plain_url(database_url) + "?sslmode=disable")
    assert result.returncode == 0, result.stderr


def test_port_in_use_fails_fast_with_one_line(busy_port: int, database_url: str) -> None:
    result = run_cli("serve", PORT=str(busy_port), DATABASE_URL=plain_url(database_url))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{busy_port}" in lines[0], result.stderr


# -- migrations --------------------------------------------------------------------------------------------------


@pytest.fixture
async def scratch_database_url(database_url: str) -> AsyncIterator[str]:
    """An empty database on the same server as the test database, dropped afterwards. Named after the test
    database, so suites running side by side on one server do not drop each other's."""
    admin = create_async_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    name = f"{make_url(database_url).database}_migration_check"
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


def test_migrations_upgrade_downgrade_upgrade_without_drift(scratch_database_url: str) -> None:
    config = alembic_config(scratch_database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    command.check(config)  # raises when the models and the migrated schema differ
