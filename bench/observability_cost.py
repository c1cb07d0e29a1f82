"""What operators' visibility costs a turn: the added latency (service minus a direct upstream call, 100-item
history, one request at a time) of the same service in three modes, started one after the other in one run:

- off: no request layer (no request id, no request line, no request metrics) and no log line at INFO;
- on: as shipped, one JSON log line per request at INFO (to the log file) and the Prometheus metrics;
- traced: on, plus OpenTelemetry tracing into an in-process exporter (BatchSpanProcessor, in-memory).

Bar (issue 20): logs and metrics together cost at most 10% of a turn's added latency (on vs off, p50).
Part of `make bench` (skip with BENCH_SKIP=observability); alone:

    .venv/bin/python -m bench.observability_cost --database-url postgresql://postgres@127.0.0.1:5432/bench_x
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from bench import scenarios, seed
from bench.measure import Samples, percentile
from bench.report import Row
from bench.seed import ConversationSet
from bench.stack import Process, start_fake_upstream, start_service
from service.config import Settings, normalize_database_url
from service.migrate import upgrade

MODES = ("off", "on", "traced")
ROUNDS = 2
WARM = 30
BAR = 0.10


def serve(mode: str) -> None:
    import uvicorn  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415
    from service.observability.logs import configure  # noqa: PLC0415
    from service.observability.requests import RequestObserver  # noqa: PLC0415

    settings = Settings.from_env()
    provider: Any = None
    if mode == "traced":
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: PLC0415

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    log_config = configure("WARNING" if mode == "off" else "INFO", "json")
    app = create_app(settings, tracer_provider=provider)
    if mode == "off" and isinstance(app.asgi_handler, RequestObserver):
        app.asgi_handler = app.asgi_handler.app
    logging.getLogger("service.access").setLevel(logging.WARNING if mode == "off" else logging.INFO)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=log_config, access_log=False)


def cost_row(by_mode: dict[str, Samples]) -> Row:
    off, on, traced = (by_mode[m].added(50) for m in MODES)
    share = (on - off) / off if off > 0 else float("inf")
    traced_share = (traced - off) / off if off > 0 else float("inf")
    errors = sum(s.errors for s in by_mode.values())
    note = (
        f"n={len(by_mode['on'].service)} per mode in {ROUNDS} rounds; "
        f"added p99 off {by_mode['off'].added(99):.2f} / on "
        f"{by_mode['on'].added(99):.2f} / traced {by_mode['traced'].added(99):.2f} ms; service p50 "
        + " / ".join(f"{m} {percentile(by_mode[m].service, 50) * 1000:.2f}" for m in MODES)
        + f" ms; tracing adds {traced_share:+.0%} (in-process exporter)"
        + (f"; {errors} error(s)" if errors else "")
    )
    return Row(
        "observability: added latency p50 off / logs+metrics / +tracing",
        f"{off:.2f} / {on:.2f} ({share:+.0%}) / {traced:.2f} ms",
        "logs+metrics ≤ +10%",
        share <= BAR and not errors,
        note,
    )


async def measure(
    url: str, upstream: Process, logs: Path, secret: str, ids: Sequence[str], history: Sequence[str], turns: int
) -> Row:
    """`ids`: conversations with 100-item histories, conversations_needed(turns) of them. The modes take turns
    in two rounds (off, on, traced, off, on, traced), so that a change in the machine's load between them
    weighs on each mode alike."""
    by_mode = {mode: Samples() for mode in MODES}
    share = len(ids) // (ROUNDS * len(MODES))
    per_round = turns // ROUNDS
    for n, mode in enumerate(MODES * ROUNDS):
        mine = ids[n * share : (n + 1) * share]
        command = [sys.executable, "-m", "bench.observability_cost", "serve", "--mode", mode]
        service = await asyncio.to_thread(
            start_service, logs, database_url=url, upstream_port=upstream.port, command=command
        )
        try:
            target = scenarios.Target(service, upstream.port, secret)
            await scenarios.turn_latency(target, mine[-WARM:], history, count=0, warmup=WARM)
            samples = await scenarios.turn_latency(
                target, mine[:-WARM], history, count=per_round, warmup=max(5, per_round // 10)
            )
        finally:
            await asyncio.to_thread(service.stop)
        merged = by_mode[mode]
        merged.service += samples.service
        merged.direct += samples.direct
        merged.errors += samples.errors
        merged.first_error = merged.first_error or samples.first_error
    return cost_row(by_mode)


def conversations_needed(turns: int) -> int:
    per_round = turns // ROUNDS
    return ROUNDS * len(MODES) * (per_round + max(5, per_round // 10) + WARM)


async def standalone(url: str, turns: int) -> None:
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    tenant_id, secret = await seed.bench_key(engine)
    conversations = ConversationSet("obs", 100, conversations_needed(turns))
    await seed.seed(engine, tenant_id, conversations)
    history = await seed.history_bodies(engine, conversations.ids()[0])
    await engine.dispose()
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    try:
        row = await measure(url, upstream, logs, secret, conversations.ids(), history, turns)
    finally:
        await asyncio.to_thread(upstream.stop)
    print(f"{row.scenario}: {row.figure} (bar {row.bar}: {'PASS' if row.passed else 'FAIL'})\n  {row.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("serve")
    one.add_argument("--mode", choices=MODES, default="on")
    parser.add_argument("--database-url")
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.mode)
    elif args.database_url:
        uvloop.run(standalone(normalize_database_url(args.database_url), args.turns))
    else:
        parser.error("--database-url is needed")


if __name__ == "__main__":
    main()
