"""The foundation: health and readiness, API-key auth, the CLI, configuration errors, migrations."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.config import normalize_database_url
from service.migrate import alembic_config
from tests.cli_support import ROOT, cli_env
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter


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


async def test_health_and_ready_answer_head_as_they_answer_get(anonymous: httpx.AsyncClient) -> None:
    """Load balancers that probe with HEAD got 405."""
    for path in ("/health", "/ready"):
        answer = await anonymous.head(path)
        assert (answer.status_code, answer.content) == (200, b""), path


async def test_ready_is_503_when_database_unreachable(start_server: Callable[..., LiveServer]) -> None:
    live = start_server(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health")).status_code == 200
        answer = await client.get("/ready")
        assert (await client.head("/ready")).status_code == 503
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


@pytest.mark.parametrize(
    "wrong",
    [{"database": "convstore_no_such_database"}, {"username": "convstore_no_such_role"}],
    ids=["dropped-database", "unknown-role"],
)
async def test_a_dropped_database_or_refused_role_answers_503_database_unavailable(
    start_server: Callable[..., LiveServer], database_url: str, wrong: dict[str, str]
) -> None:
    """PostgreSQL refuses these when a connection opens (the database was dropped, the role or password refused):
    not the request's fault, and a retry succeeds once the operator mends it."""
    live = start_server(database_url=make_url(database_url).set(**wrong).render_as_string(hide_password=False))
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        answer = await client.post(
            "/v1/conversations", json={}, headers={"Authorization": "Bearer sk-cs-any-key-at-all"}
        )
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "database_unavailable"
    assert answer.headers["retry-after"] == "1"


# -- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (None, "Missing API key"),
        ("Bearer", "The Authorization header holds no Bearer key"),
        ("Basic abc", "The Authorization header holds no Bearer key"),
        ("sk-cs-not-a-real-key", "The Authorization header holds no Bearer key"),  # a key without its scheme
        ("Bearer sk-cs-not-a-real-key", "Incorrect or revoked API key"),
    ],
)
async def test_v1_without_a_valid_key_is_401_envelope(
    anonymous: httpx.AsyncClient, header: str | None, says: str
) -> None:
    headers = {"Authorization": header} if header else {}
    answer = await anonymous.post("/v1/conversations", json={}, headers=headers)
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert error["message"].startswith(says)
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
    # RFC 9110: a 405 names the methods the route takes (the router answers OPTIONS on every route).
    assert set(wrong.headers["allow"].split(", ")) == {"POST", "OPTIONS"}
    item_route = await alice.http.patch("/v1/conversations/conv_x/items/msg_x")
    assert item_route.status_code == 405
    assert set(item_route.headers["allow"].split(", ")) == {"GET", "DELETE", "OPTIONS"}


# -- CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [(), ("serve",), ("migrate",), ("keys",), ("keys", "create"), ("keys", "list"), ("keys", "revoke")]
)
def test_every_command_has_help(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_serve_with_a_shared_metrics_directory_that_does_not_exist_stops_with_one_line(tmp_path: Path) -> None:
    """prometheus_client's PROMETHEUS_MULTIPROC_DIR: a traceback from inside the metrics library, before."""
    missing = tmp_path / "gone"
    result = run_cli("serve", PROMETHEUS_MULTIPROC_DIR=str(missing), DATABASE_URL="postgresql://127.0.0.1:1/x")
    assert result.returncode == 2
    assert result.stderr == (
        f"error: PROMETHEUS_MULTIPROC_DIR={missing} is not a directory: create it (empty, before each start), "
        "or leave it unset\n"
    )


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
    unknown = run_cli("keys", "list", "--tenant", "nobody", DATABASE_URL=plain_url(database_url))
    assert unknown.returncode != 0 and "No tenant with the name or id 'nobody'" in unknown.stderr
    # The admin API's limit on a key's name, which `keys list` prints whole.
    long_name = run_cli("keys", "create", "--tenant", "ops", "--name", "n" * 201, DATABASE_URL=plain_url(database_url))
    assert long_name.returncode == 2 and "name must be at most 200 characters" in long_name.stderr
    assert "Traceback" not in long_name.stderr


def test_revoking_an_unknown_key_fails_cleanly(database_url: str) -> None:
    result = run_cli("keys", "revoke", "key_nope", DATABASE_URL=plain_url(database_url))
    assert result.returncode != 0
    assert "no key with id key_nope" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_failed_export_leaves_the_backup_file_as_it_was(
    database_url: str, alice: Tenant, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.jsonl"
    backup.write_bytes(b"precious backup line\n")
    for args, env in [
        (("--tenant", "nosuch"), {"DATABASE_URL": plain_url(database_url)}),
        ((), {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}),
    ]:
        failed = run_cli("export", *args, "-o", str(backup), **env)
        assert failed.returncode == 2
        assert len(failed.stderr.strip().splitlines()) == 1 and failed.stderr.startswith("error: "), failed.stderr
        assert backup.read_bytes() == b"precious backup line\n"
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    done = run_cli("export", "--tenant", "alice", "-o", str(backup), DATABASE_URL=plain_url(database_url))
    assert done.returncode == 0, done.stderr
    assert conversation in backup.read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["backup.jsonl"]  # no partial file left behind


def test_export_to_an_unwritable_path_is_one_error_line(database_url: str, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir.jsonl"
    result = run_cli("export", "-o", str(target), DATABASE_URL=plain_url(database_url))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {target}"), result.stderr


async def test_the_cli_refuses_tenant_names_the_admin_api_refuses_and_trims_like_it(
    database_url: str, alice: Tenant, db: AsyncEngine, tmp_path: Path
) -> None:
    for bad, expected in [
        ("", "tenant must be a non-empty string"),
        ("   ", "tenant must be a non-empty string"),
        ("x" * 201, "tenant must be at most 200 characters"),
        ("team/x", "tenant cannot contain '/'"),
    ]:
        result = run_cli("keys", "create", "--tenant", bad, DATABASE_URL=plain_url(database_url))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    trimmed = run_cli("keys", "create", "--tenant", " acme ", DATABASE_URL=plain_url(database_url))
    assert trimmed.returncode == 0, trimmed.stderr
    assert "for tenant 'acme'" in trimmed.stdout
    # An import into a new tenant creates it the same way.
    await alice.http.post("/v1/conversations", json={})
    backup = tmp_path / "alice.jsonl"
    assert run_cli("export", "-o", str(backup), DATABASE_URL=plain_url(database_url)).returncode == 0
    refused = run_cli("import", str(backup), "--tenant", " ", DATABASE_URL=plain_url(database_url))
    assert refused.returncode == 2
    assert "tenant must be a non-empty string (nothing was imported)" in refused.stderr
    async with db.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM tenant ORDER BY name"))).scalars().all()
    assert names == ["acme", "alice"]
    # A tenant an export names is restored as it was named there, though no new tenant may be named so now.
    restored = tmp_path / "restored.jsonl"
    restored.write_text('{"object": "conversation", "tenant": "old/team", "metadata": {}}\n')
    assert run_cli("import", str(restored), DATABASE_URL=plain_url(database_url)).returncode == 0
    renamed = run_cli("import", str(restored), "--tenant", "new/team", DATABASE_URL=plain_url(database_url))
    assert renamed.returncode == 2 and "tenant cannot contain '/'" in renamed.stderr, renamed.stderr
    async with db.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM tenant ORDER BY name"))).scalars().all()
    assert names == ["acme", "alice", "old/team"]


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
        ({"SHUTDOWN_GRACE_PERIOD": "400000000"}, "SHUTDOWN_GRACE_PERIOD must be at most 315360000, got"),
        ({"WEBHOOK_TIMEOUT_SECONDS": "60"}, "WEBHOOK_TIMEOUT_SECONDS must be at most 30, got"),
        # Each named DATABASE_URL, started, or ended in a traceback.
        ({"DATABASE_DIRECT_URL": "garbage"}, "DATABASE_DIRECT_URL must start with postgresql://"),
        ({"OPENROUTER_BASE_URL": "http://"}, "OPENROUTER_BASE_URL must be an http(s) URL with a host"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "notaurl"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be the http(s) URL of an OTLP"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "localhost:4318"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be"),
        # Written without its scheme, the credentials would have been echoed.
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "user:SECRETPASSWORD@collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be"),
        ({"MODEL_CONTEXT_WINDOWS": "a/b=\u00b2"}, "MODEL_CONTEXT_WINDOWS entries must look like"),
        ({"CONSOLE_SESSION_SECRET": "x"}, "CONSOLE_SESSION_SECRET must be at least 32 characters"),
        ({"PORT": "1_000"}, "PORT must be a number"),
        # The pooler refused the first session setting sent at connect: that was the message.
        (
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:6432/db", "DATABASE_TRANSACTION_POOLER": "true"},
            "DATABASE_TRANSACTION_POOLER=true needs DATABASE_URL (the pooler) and DATABASE_DIRECT_URL",
        ),
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
    url = plain_url(database_url)  # the embedded server's names its socket in the query
    result = run_cli("keys", "list", DATABASE_URL=url + ("&" if "?" in url else "?") + "sslmode=disable")
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


def test_processes_migrating_at_once_wait_for_each_other(scratch_database_url: str) -> None:
    """Replicas of a release started together each migrate (AUTO_MIGRATE defaults to on): all but one used to exit
    with a duplicate key in PostgreSQL's catalog, as their CREATE TYPE and CREATE TABLE raced."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "migrate"],
            cwd=ROOT,
            env=cli_env(DATABASE_URL=plain_url(scratch_database_url)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(process.wait(timeout=120), *process.communicate()) for process in started]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [error for _, _, error in results]
    head = ScriptDirectory.from_config(alembic_config(scratch_database_url)).get_current_head()
    assert asyncio.run(_revision(scratch_database_url)) == head
    # One of them migrated, and only that one says so.
    said = sorted(out.strip() for _, out, _ in results)
    assert said.count(f"database migrated from an empty schema to {head}") == 1, said
    assert said.count(f"database is at the latest revision ({head})") == 3, said
    command.check(alembic_config(scratch_database_url))


def test_with_auto_migrate_off_commands_refuse_an_old_schema_and_change_nothing(scratch_database_url: str) -> None:
    """A key made or a backup taken with a new release's CLI must not migrate under the old release's processes,
    and `serve` must not start (and report ready) on a schema its code does not match."""
    config = alembic_config(scratch_database_url)
    head = ScriptDirectory.from_config(config).get_current_head()
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    old = asyncio.run(_revision(scratch_database_url))
    assert old is not None and old != head
    url = plain_url(scratch_database_url)
    for args in [("keys", "list"), ("export",), ("serve",)]:
        result = run_cli(*args, timeout=30, DATABASE_URL=url, AUTO_MIGRATE="false", PORT="0")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert old in lines[0] and str(head) in lines[0] and "python -m service migrate" in lines[0]
        assert asyncio.run(_revision(scratch_database_url)) == old  # no DDL ran

    command.downgrade(config, "base")  # a database never migrated
    never = run_cli("serve", timeout=30, DATABASE_URL=url, AUTO_MIGRATE="false", PORT="0")
    assert never.returncode == 2 and "no revision (never migrated)" in never.stderr, never.stderr

    assert run_cli("migrate", DATABASE_URL=url, AUTO_MIGRATE="false").returncode == 0
    assert asyncio.run(_revision(scratch_database_url)) == head
    assert run_cli("keys", "list", DATABASE_URL=url, AUTO_MIGRATE="false").returncode == 0


def test_with_auto_migrate_on_commands_still_migrate(scratch_database_url: str) -> None:
    config = alembic_config(scratch_database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    result = run_cli("keys", "list", DATABASE_URL=plain_url(scratch_database_url))
    assert result.returncode == 0, result.stderr
    assert asyncio.run(_revision(scratch_database_url)) == ScriptDirectory.from_config(config).get_current_head()


def test_migrate_says_what_it_did_and_refuses_a_newer_releases_schema(scratch_database_url: str) -> None:
    """An operator reads from its output whether the schema changed; a database a newer release migrated is named
    as such, with AUTO_MIGRATE on (the default) as with it off, not as alembic's "Can't locate revision"."""
    head = ScriptDirectory.from_config(alembic_config(scratch_database_url)).get_current_head()
    url = plain_url(scratch_database_url)
    first = run_cli("migrate", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"database migrated from an empty schema to {head}"
    command.downgrade(alembic_config(scratch_database_url), "-1")
    old = asyncio.run(_revision(scratch_database_url))
    second = run_cli("migrate", DATABASE_URL=url)
    assert second.stdout.strip() == f"database migrated from revision {old} to {head}"
    again = run_cli("migrate", DATABASE_URL=url)
    assert again.stdout.strip() == f"database is at the latest revision ({head})"

    asyncio.run(_set_revision(scratch_database_url, "9999_newer"))
    for args in [("migrate",), ("serve",), ("keys", "list")]:
        result = run_cli(*args, timeout=30, DATABASE_URL=url, PORT="0")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.strip() == (
            f"error: the database is at revision 9999_newer, which this release ({head}) does not know: a newer "
            "release migrated it; run that release"
        )
    asyncio.run(_set_revision(scratch_database_url, str(head)))


async def _set_revision(url: str, revision: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        await engine.dispose()


async def _revision(url: str) -> str | None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text("SELECT max(version_num) FROM alembic_version"))
    finally:
        await engine.dispose()


async def test_ready_is_503_on_a_database_without_the_schema(
    start_server: Callable[..., LiveServer], scratch_database_url: str
) -> None:
    """A database re-created empty under a running process: every request would fail, so it is not ready."""
    live = start_server(database_url=scratch_database_url)
    async with httpx.AsyncClient(base_url=live.url) as client:
        answer = await client.get("/ready")
    assert answer.status_code == 503, answer.text
    assert answer.json()["database"] == "not_migrated"
