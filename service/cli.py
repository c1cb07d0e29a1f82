"""Command line: serve, migrate, keys. Configuration problems end the process with one clear line, no traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from service.config import ConfigError, Settings

# The URL of the database the CLI resolved (the embedded server's, when DATABASE_URL is unset), handed to
# uvicorn's workers through the environment.
RESOLVED_URL_ENV = "CONVSTORE_RESOLVED_DATABASE_URL"
DEFAULT_TENANT = "default"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """Yield the asyncpg URL to use; start (and finally stop) the embedded server when DATABASE_URL is unset."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from service.db.embedded import EmbeddedPostgres  # noqa: PLC0415 - only for the embedded default

    server = EmbeddedPostgres(settings.data_dir)
    # SIGTERM must unwind through `finally` so the embedded server stops with us.
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        url = server.start()
        yield url
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _describe(url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(url).render_as_string(hide_password=True)


async def _check_database(url: str) -> None:
    from sqlalchemy import text  # noqa: PLC0415

    from service.db.session import create_engine  # noqa: PLC0415

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to the database at {_describe(url)}: {reason}") from None
    finally:
        await engine.dispose()


async def _revision(url: str) -> str | None:
    """The database's schema revision, refused when it is one a newer release made: neither migrating nor serving
    can go on from it."""
    from service.db.session import create_engine  # noqa: PLC0415
    from service.migrate import database_revision, head_revision, is_known_revision  # noqa: PLC0415

    engine = create_engine(url, pool_size=1)
    try:
        current = await database_revision(engine)
    except Exception as exc:
        raise ConfigError(f"cannot read the schema revision at {_describe(url)}: {type(exc).__name__}") from None
    finally:
        await engine.dispose()
    if current is not None and not is_known_revision(current):
        raise ConfigError(
            f"the database is at revision {current}, which this release ({head_revision()}) does not know: "
            "a newer release migrated it; run that release"
        )
    return current


def _migrate(url: str) -> str | None:
    """Brings the database to this release's revision; what it did, to be printed (None: nothing to do)."""
    from service.migrate import head_revision, upgrade  # noqa: PLC0415

    if asyncio.run(_revision(url)) == head_revision():
        return None
    try:
        migrated = upgrade(url)
    except Exception as exc:
        raise ConfigError(f"migration failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if migrated is None:  # another process, started at the same time, did it
        return None
    before = f"revision {migrated.before}" if migrated.before else "an empty schema"
    return f"migrated from {before} to {head_revision()}"


def _check_revision(url: str) -> None:
    from service.migrate import head_revision  # noqa: PLC0415

    current = asyncio.run(_revision(url))
    head = head_revision()
    if current == head:
        return
    found = f"revision {current}" if current else "no revision (never migrated)"
    raise ConfigError(
        f"the database is at {found}, this release needs {head} and AUTO_MIGRATE=false: "
        "run `python -m service migrate` first"
    )


def _prepare_schema(settings: Settings, url: str) -> str | None:
    """AUTO_MIGRATE=false only checks the revision: a key made or a backup taken with a new release's CLI must
    not run DDL under the processes of the release before, and a process must not serve a schema its code does
    not match (every request would fail). Returns what a migration did, if one ran."""
    if settings.auto_migrate:
        return _migrate(url)
    _check_revision(url)
    return None


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _first_start_key(url: str) -> str | None:
    from service.db.session import create_engine  # noqa: PLC0415
    from service.keys import service as keys  # noqa: PLC0415

    engine = create_engine(url, pool_size=1)
    try:
        if await keys.count_keys(engine) > 0:
            return None
        return (await keys.create_key(engine, tenant=DEFAULT_TENANT, name="first start")).secret
    finally:
        await engine.dispose()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    # prometheus_client's own variable, read as its metrics are made (when the module below is imported).
    shared_metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared_metrics and not os.path.isdir(shared_metrics):
        return _fail(
            f"PROMETHEUS_MULTIPROC_DIR={shared_metrics} is not a directory: create it (empty, before each start), "
            "or leave it unset"
        )
    from service.observability.metrics_server import prepare_workers, serve_metrics  # noqa: PLC0415

    prepare_workers(settings)
    # Console sessions must verify in every worker: without a configured secret, they share one per start.
    os.environ.setdefault("CONSOLE_SESSION_SECRET", secrets.token_urlsafe(32))

    _check_port_free(settings.host, settings.port)
    with _database(settings) as url:
        # Behind a pooler in transaction mode, checks and migrations go to the server directly.
        direct = settings.database_direct_url or url
        asyncio.run(_check_database(direct))
        migrated = _prepare_schema(settings, direct)
        secret = asyncio.run(_first_start_key(url)) if settings.embedded_database else None
        if secret:
            print("First start: created an API key for tenant 'default'. It is shown only this once:")
            print(f"    {secret}")
        mode = "demo upstream (no OPENROUTER_API_KEY set)" if settings.demo_upstream else settings.openrouter_base_url
        print(f"Upstream: {mode}")
        where = f"embedded PostgreSQL in {settings.data_dir}" if settings.embedded_database else _describe(url)
        print(f"Database: {where}" + (f" ({migrated})" if migrated else ""))
        os.environ[RESOLVED_URL_ENV] = url
        from service.serving import serve  # noqa: PLC0415

        def banner(port: int) -> str:
            """Printed once the port is known (PORT=0: the one the kernel chose), which the example names too."""
            serving = f"Serving on http://{settings.host}:{port} (docs at /docs)"
            if not secret:
                return serving
            return (
                f"Try: curl -s http://{settings.host}:{port}/v1/responses \\\n"
                f"       -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' \\\n"
                """       -d '{"model": "openai/gpt-4o-mini", "input": "Hello!"}'\n"""
                f"{serving}"
            )

        serve_metrics(settings)
        log_config = _configure_logging(settings, uvicorn_access=args.access_log)
        app = "service.cli:app_from_environment"
        if not serve(settings, app=app, access_log=args.access_log, banner=banner, log_config=log_config):
            return 3
    return 0


def app_from_environment() -> Any:
    """uvicorn's factory in each worker: settings from the environment, database as resolved by the CLI."""
    from service.app import create_app  # noqa: PLC0415

    settings = Settings.from_env()
    _configure_logging(settings)
    if settings.workers > 1:
        from service.serving import stop_with_supervisor  # noqa: PLC0415

        stop_with_supervisor()
    return create_app(settings, database_url=os.environ.get(RESOLVED_URL_ENV) or settings.database_url)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from service.migrate import head_revision  # noqa: PLC0415

    with _database(settings) as resolved:
        url = settings.database_direct_url or resolved
        asyncio.run(_check_database(url))
        migrated = _migrate(url)
    print(f"database {migrated}" if migrated else f"database is at the latest revision ({head_revision()})")
    return 0


def _with_engine(settings: Settings, work: Callable[[Any], Any]) -> Any:
    from service.db.session import create_engine  # noqa: PLC0415

    with _database(settings) as resolved:
        url = settings.database_direct_url or resolved
        asyncio.run(_check_database(url))
        _prepare_schema(settings, url)

        async def run() -> Any:
            engine = create_engine(url, pool_size=1)
            try:
                return await work(engine)
            finally:
                await engine.dispose()

        return asyncio.run(run())


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from service.errors import ServiceError  # noqa: PLC0415
    from service.keys import service as keys  # noqa: PLC0415

    try:
        created = _with_engine(
            settings,
            lambda engine: keys.create_key(engine, tenant=args.tenant, name=args.name, is_admin=args.admin),
        )
    except ServiceError as exc:
        return _fail(exc.message)
    kind = "admin key" if created.is_admin else "key"
    print(f"created {kind} {created.id} for tenant '{created.tenant}'; the secret is shown only this once:")
    print(created.secret)
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from service.errors import ServiceError  # noqa: PLC0415
    from service.keys import service as keys  # noqa: PLC0415

    try:
        rows = _with_engine(settings, lambda engine: keys.list_keys(engine, args.tenant))
    except ServiceError as exc:
        return _fail(exc.message)
    print(f"{'ID':<46} {'TENANT':<16} {'PREFIX':<14} {'ADMIN':<6} {'STATUS':<8} NAME")
    for row in rows:
        status = "revoked" if row.revoked_at else "active"
        admin = "yes" if row.is_admin else "no"
        print(f"{row.id:<46} {row.tenant:<16} {row.prefix + '…':<14} {admin:<6} {status:<8} {row.name}")
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from service.keys import service as keys  # noqa: PLC0415

    revoked_at = _with_engine(settings, lambda engine: keys.revoke(engine, args.id))
    if revoked_at is None:
        return _fail(f"no key with id {args.id}")
    print(f"revoked {args.id}")
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from service.errors import ServiceError  # noqa: PLC0415
    from service.lifecycle import cli_transfer  # noqa: PLC0415

    def export(out: BinaryIO) -> None:
        _with_engine(
            settings,
            lambda engine: cli_transfer.export_to(out, engine, tenant=args.tenant, conversation=args.conversation),
        )

    try:
        if args.output:
            _export_replacing(Path(args.output), export)
        else:
            export(cli_transfer.stdout())
    except ServiceError as exc:
        return _fail(exc.message)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing to say to it, and what the export wrote is no longer read.
        # Python would write a second error at exit, flushing stdout into the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE
    except OSError as exc:
        return _fail(f"cannot write {args.output or 'to standard output'}: {exc.strerror or exc}")
    return 0


# As a shell reports a command SIGPIPE ended (128 + 13): the export did not finish.
_BROKEN_PIPE = 141


def _export_replacing(target: Path, export: Callable[[BinaryIO], None]) -> None:
    """Write into a new file beside `target` and rename it over `target` only once the export is complete: a
    failed export (unknown tenant, database down) leaves the backup already there as it was."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    # Created as open() would create `target` (0666 less the umask), never over an existing file.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as out:
            export(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from service.context.sealing import Sealer  # noqa: PLC0415
    from service.errors import ServiceError  # noqa: PLC0415
    from service.lifecycle import cli_transfer  # noqa: PLC0415

    try:
        with contextlib.ExitStack() as files:
            source = sys.stdin.buffer if args.file == "-" else files.enter_context(open(args.file, "rb"))
            imported = _with_engine(
                settings,
                lambda engine: cli_transfer.import_from(
                    source,
                    engine,
                    tenant=args.tenant,
                    caps=settings.conversation_caps,
                    sealer=Sealer(engine, settings.compaction_key, settings.previous_compaction_keys),
                ),
            )
    except ServiceError as exc:
        said = "nothing is imported" in exc.message  # a cut-short file's message says so already
        return _fail(exc.message if said else f"{exc.message} (nothing was imported)")
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}")
    print(f"imported {imported.conversations} conversations ({imported.items} items) with new ids")
    if imported.unopened_compaction_items:
        print(
            f"warning: {imported.unopened_compaction_items} compaction item(s) were sealed with a key this service"
            " does not hold, and turns on their conversations will be refused until each is deleted. Add the"
            " exporting service's COMPACTION_KEY to COMPACTION_KEYS_PREVIOUS (without one, the key its database"
            " holds: `convstore compaction-key` there prints it) and import again",
            file=sys.stderr,
        )
    return 0


def cmd_compaction_key(settings: Settings, args: argparse.Namespace) -> int:
    """The key this database seals compaction items with when COMPACTION_KEY is not set: what another service
    needs (in COMPACTION_KEYS_PREVIOUS) to take them in an import of this database's export."""
    from service.context.sealing import Sealer  # noqa: PLC0415

    key = _with_engine(settings, lambda engine: Sealer(engine).database_key())
    if key is None:
        return _fail("this database holds no compaction key: its items were sealed with COMPACTION_KEY, if any")
    print(key)
    return 0


def cmd_count_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from service.context.backfill import count_missing  # noqa: PLC0415

    if args.batch < 1:
        return _fail("--batch must be at least 1")
    counted = _with_engine(settings, lambda engine: count_missing(engine, batch=args.batch))
    print(f"counted {counted} items stored without a token count")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convstore",
        description="Stateful, OpenAI-compatible conversation store for OpenRouter's Responses API.",
        epilog="Configuration comes from environment variables; see README.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="migrate (AUTO_MIGRATE=false: refuse an old schema) and serve the API")
    serve.add_argument(
        "--access-log", action="store_true", help="also uvicorn's own access line (ours, one per request, is always on)"
    )
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to the latest revision")
    migrate.set_defaults(handler=cmd_migrate)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key; the secret is printed alone on the last line")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--admin", action="store_true", help="the key may also use the /admin routes")
    create.add_argument("--name", default="", help="a label to tell keys apart")
    create.set_defaults(handler=cmd_keys_create)
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", help="the key id, as shown by `keys list`")
    revoke.set_defaults(handler=cmd_keys_revoke)

    export = commands.add_parser(
        "export", help="write conversations as JSON Lines (a copy to import, not a backup); default: all of them"
    )
    which = export.add_mutually_exclusive_group()
    which.add_argument("--tenant", help="only this tenant's conversations")
    which.add_argument("--conversation", help="only this conversation")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    export.set_defaults(handler=cmd_export)
    import_ = commands.add_parser("import", help="import an export (new ids), all of it or nothing")
    import_.add_argument("file", help="the JSON Lines file, or - for standard input")
    import_.add_argument("--tenant", help="import into this tenant (created if new); default: each header's tenant")
    import_.set_defaults(handler=cmd_import)
    compaction_key = commands.add_parser(
        "compaction-key",
        help="print the key this database seals compaction items with (when COMPACTION_KEY is not set), for another"
        " service's COMPACTION_KEYS_PREVIOUS",
    )
    compaction_key.set_defaults(handler=cmd_compaction_key)
    count_tokens = commands.add_parser(
        "count-tokens", help="store estimated token counts for items stored before counts were kept"
    )
    count_tokens.add_argument("--batch", type=int, default=1000, help="items per transaction (default 1000)")
    count_tokens.set_defaults(handler=cmd_count_tokens)
    return parser


def _configure_logging(settings: Settings, *, uvicorn_access: bool = False) -> dict[str, Any]:
    from service.observability.logs import configure  # noqa: PLC0415

    config = configure(settings.log_level, settings.log_format)
    if uvicorn_access:
        config["loggers"]["uvicorn.access"]["level"] = settings.log_level
        logging.getLogger("uvicorn.access").setLevel(settings.log_level)
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        _configure_logging(settings)
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler
        return handler(settings, args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM after a graceful shutdown: the embedded server was stopped on the way out.
        return 0
