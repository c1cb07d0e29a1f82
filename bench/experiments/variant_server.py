"""An experiment, not part of `make bench`: the service with another upstream transport behind httpx's API, through
create_app's `upstream_transport` seam (no service code changed), measured against the shipped one in one run.

    .venv/bin/python -m bench.experiments.variant_server compare \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_h5

`serve --transport aiohttp` alone runs one instance configured like `python -m service serve` (from the
environment, one worker, no migrations: the database must be migrated).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx
import uvloop

from bench import scenarios, seed
from bench.measure import percentile
from bench.seed import ConversationSet
from bench.stack import start_fake_upstream, start_service
from service.config import Settings, normalize_database_url
from service.migrate import upgrade


def serve(transport_name: str) -> None:
    import uvicorn  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415

    settings = Settings.from_env()
    transport: httpx.AsyncBaseTransport | None = None
    if transport_name == "aiohttp":
        from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

        transport = AiohttpTransport(
            limits=httpx.Limits(max_connections=settings.upstream_max_connections, max_keepalive_connections=200)
        )
    app = create_app(settings, upstream_transport=transport)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


async def compare(url: str, turns: int, seconds: float) -> None:
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    tenant_id, secret = await seed.bench_key(engine)
    suffix = os.getpid()
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    try:
        for name in ("httpx", "aiohttp"):
            latency_set = ConversationSet(f"v{name}{suffix}l", 100, turns + 80)
            throughput_set = ConversationSet(f"v{name}{suffix}t", 100, 64 * 20)
            await seed.seed(engine, tenant_id, latency_set)
            await seed.seed(engine, tenant_id, throughput_set)
            history = await seed.history_bodies(engine, latency_set.ids()[0])
            command = [sys.executable, "-m", "bench.experiments.variant_server", "serve", "--transport", name]
            service = await asyncio.to_thread(
                start_service, logs, database_url=url, upstream_port=upstream.port, command=command
            )
            try:
                target = scenarios.Target(service, upstream.port, secret)
                ids = latency_set.ids()
                await scenarios.turn_latency(target, ids[-40:], history, count=0, warmup=40)
                samples = await scenarios.turn_latency(target, ids[:-40], history, count=turns, warmup=20)
                row, _ = await scenarios.throughput(
                    target, throughput_set.ids(), clients=64, duration=seconds, warmup=2, model="bench/latency-10"
                )
            finally:
                await asyncio.to_thread(service.stop)
            print(
                f"{name:8s} sequential added p50 {samples.added(50):.2f} ms, p99 {samples.added(99):.2f} ms "
                f"(service p50 {percentile(samples.service, 50) * 1000:.2f} ms); throughput {row.figure}; {row.note}"
            )
    finally:
        await engine.dispose()
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("serve")
    one.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx")
    both = commands.add_parser("compare")
    both.add_argument("--database-url", required=True)
    both.add_argument("--turns", type=int, default=300)
    both.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.transport)
    else:
        uvloop.run(compare(normalize_database_url(args.database_url), args.turns, args.seconds))


if __name__ == "__main__":
    main()
