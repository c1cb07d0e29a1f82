"""Turns/s with 1, 2 and 4 service processes on one PostgreSQL, as docs/scaling.md reports them.

    python -m bench.scaling --database-url postgresql://postgres@127.0.0.1:5432/bench_scaling
    python -m bench.scaling --database-url … --processes 1,2,4 --seconds 8 --pgbouncer

Each process is its own `python -m service serve` on its own port (as on separate hosts; not uvicorn workers
sharing a socket), all on one database (wiped and seeded: conversations of 20 items). 64 closed-loop clients
are spread evenly over the processes and send non-streamed conversation turns to the bench's fake upstream
(zero latency, so the figure is what the service and PostgreSQL can do, not what OpenRouter would take). The
direct call to the same fake upstream is measured in the same run as the reference. `--pgbouncer` runs every
process through Debian's pgbouncer in transaction mode (DATABASE_TRANSACTION_POOLER), listening directly.
Everything shares this machine's cores: read the figures as ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench import seed
from bench.measure import (
    UPSTREAM_PATH,
    closed_loop,
    direct_body,
    percentile,
    service_client,
    turn_body,
    upstream_client,
)
from bench.seed import ConversationSet
from bench.stack import Service, start_fake_upstream, start_service
from service.config import normalize_database_url
from service.migrate import upgrade

MODEL = "bench/fast"
CLIENTS = 64


async def _prepare(url: str, conversations: ConversationSet) -> str:
    await seed.create_database_if_missing(url)
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    try:
        await seed.wipe(engine)
        tenant_id, secret = await seed.bench_key(engine)
        await seed.seed(engine, tenant_id, conversations)
        return secret
    finally:
        await engine.dispose()


async def _measure(
    services: list[Service], secret: str, conversations: list[str], seconds: float
) -> tuple[float, float, int]:
    per_client = len(conversations) // CLIENTS
    own = [conversations[i * per_client : (i + 1) * per_client] for i in range(CLIENTS)]
    pool = [service_client(services[i % len(services)].port, secret) for i in range(CLIENTS)]
    try:
        result = await closed_loop(
            pool, "/v1/responses", lambda i, n: turn_body(MODEL, own[i][n % per_client]), duration=seconds, warmup=2.0
        )
    finally:
        for client in pool:
            client.close()
    if result.errors:
        print(f"  {len(services)} process(es): {result.errors} error(s), first: {result.first_error}")
    return result.rate, percentile(result.latencies, 99) * 1000, result.errors


async def _direct(port: int, seconds: float) -> float:
    pool = [upstream_client(port) for _ in range(CLIENTS)]
    body = direct_body(MODEL, [])
    try:
        result = await closed_loop(pool, UPSTREAM_PATH, lambda i, n: body, duration=seconds, warmup=1.0)
    finally:
        for client in pool:
            client.close()
    return result.rate


async def run(args: argparse.Namespace) -> int:
    url = normalize_database_url(args.database_url)
    counts = [int(n) for n in args.processes.split(",")]
    conversations = ConversationSet("scaling", 20, CLIENTS * 40)
    secret = await _prepare(url, conversations)
    log_dir = Path(tempfile.mkdtemp(prefix="convstore-scaling-"))
    upstream = start_fake_upstream(log_dir)
    bouncer = None
    env: dict[str, str] = {"AUTO_MIGRATE": "false"}
    service_url = url
    if args.pgbouncer:
        from tests.pgbouncer_support import PgBouncer, require_pgbouncer  # noqa: PLC0415

        bouncer = PgBouncer(url, binary=require_pgbouncer(), pool_size=40).start()
        service_url = bouncer.url
        env |= {"DATABASE_DIRECT_URL": url, "DATABASE_TRANSACTION_POOLER": "true"}
    rows: list[tuple[int, float, float, int]] = []
    try:
        direct = await _direct(upstream.port, args.seconds)
        for count in counts:
            services = []
            try:
                for _ in range(count):
                    services.append(
                        await asyncio.to_thread(
                            start_service, log_dir, database_url=service_url, upstream_port=upstream.port, extra_env=env
                        )
                    )
                rate, p99, errors = await _measure(services, secret, conversations.ids(), args.seconds)
                rows.append((count, rate, p99, errors))
            finally:
                for service in services:
                    await asyncio.to_thread(service.stop)
    finally:
        upstream.stop()
        if bouncer is not None:
            bouncer.stop()
    via = "through pgbouncer (transaction mode)" if args.pgbouncer else "direct to PostgreSQL"
    print(f"scaling: {CLIENTS} clients, {args.seconds:.0f} s per point, {via}; direct upstream {direct:.0f} req/s")
    print(f"{'processes':>9}  {'turns/s':>8}  {'vs 1':>5}  {'p99 ms':>7}  errors")
    base = rows[0][1] if rows else 0.0
    for count, rate, p99, errors in rows:
        print(f"{count:>9}  {rate:>8.0f}  {rate / base if base else 0:>5.2f}  {p99:>7.1f}  {errors}")
    return 1 if any(errors for *_, errors in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database to wipe and seed")
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pgbouncer", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    code = asyncio.run(run(args))
    print(f"({time.monotonic() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
