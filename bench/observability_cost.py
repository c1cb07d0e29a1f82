"""What operators' visibility costs a turn: the added latency (service minus a direct upstream call, 100-item
history, one request at a time) of the same service in three modes, started one after the other in one run:

- off: no request layer (no request id, no request line, no request metrics) and no log line at INFO;
- on: as shipped, one JSON log line per request at INFO (to the log file) and the Prometheus metrics;
- traced: on, plus OpenTelemetry tracing into an in-process exporter (BatchSpanProcessor, in-memory).

Bar: logs and metrics together cost at most 10% of a turn's added latency. Judged on the CPU they
add to a turn (measured in-process, process time) against the added latency p50 without them; the end-to-end
figures of the three modes are reported beside (on two shared cores they move more between two service starts
than the whole layer costs).
Part of `make bench` (skip with BENCH_SKIP=observability); alone:

    .venv/bin/python -m bench.observability_cost --database-url postgresql://postgres@127.0.0.1:5432/bench_x
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
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


def layer_cpu_us(requests: int = 20_000) -> tuple[float, float]:
    """CPU per request (µs) of a bare ASGI app, and of the same app behind the request layer calling every hook
    a non-streamed turn calls, with its JSON line written (to memory) and its metrics counted: what logs and
    metrics add to a turn, free of the machine's load (process time, in-process)."""
    import io  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from service.observability import turns, upstream  # noqa: PLC0415
    from service.observability.logs import JsonFormatter, RequestIdFilter  # noqa: PLC0415
    from service.observability.record import note_tenant  # noqa: PLC0415
    from service.observability.requests import RequestObserver  # noqa: PLC0415

    usage = {"input_tokens": 100, "output_tokens": 20, "cost": 0.0001, "input_tokens_details": {"cached_tokens": 0}}
    state = SimpleNamespace(id="resp_1", status="completed", usage=usage, upstream_model="m/x", model="m/x", error=None)
    turn: Any = SimpleNamespace(state=state, request=SimpleNamespace(background=False, model="m/x"))

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def turn_like(scope: Any, receive: Any, send: Any) -> None:
        """The bare app plus every hook a non-streamed turn calls (tenant, upstream call, finish)."""
        note_tenant("bench")
        upstream.call_started()
        upstream.attempt_started()
        upstream.answered(200)
        upstream.call_ended()
        turns.turn_finished(turn)
        await bare(scope, receive, send)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("service.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False

    def scope() -> dict[str, Any]:
        headers = [(b"host", b"x"), (b"authorization", b"Bearer k"), (b"content-type", b"application/json")]
        return {
            "type": "http",
            "method": "POST",
            "path": "/v1/responses",
            "headers": headers,
            "state": {},
            "path_template": "/v1/responses",
        }

    async def run(app: Any) -> float:
        for _ in range(1000):
            await app(scope(), receive, send)
        started = time.process_time()
        for _ in range(requests):
            await app(scope(), receive, send)
        return (time.process_time() - started) / requests * 1e6

    async def both() -> tuple[float, float]:
        return await run(bare), await run(RequestObserver(turn_like))

    try:
        return asyncio.run(both())
    finally:
        access.removeHandler(handler)
        access.propagate = True


def cost_row(by_mode: dict[str, Samples], bare: float, observed: float) -> Row:
    """The verdict is the CPU that logs and metrics add to a turn (in-process, process time) against the turn's
    added latency p50 without them: on this shared two-core machine the end-to-end difference between two
    services started one after the other moves by more than the whole layer costs (docs/benchmarks.md), so
    it is reported beside, not judged."""
    off, on, traced = (by_mode[m].added(50) for m in MODES)
    layer_ms = (observed - bare) / 1000
    share = layer_ms / off if off > 0 else float("inf")
    errors = sum(s.errors for s in by_mode.values())
    note = (
        f"end-to-end added p50 off {off:.2f} / logs+metrics {on:.2f} / +tracing {traced:.2f} ms "
        f"(n={len(by_mode['on'].service)} per mode in {ROUNDS} interleaved rounds; p99 "
        + " / ".join(f"{by_mode[m].added(99):.2f}" for m in MODES)
        + " ms; service p50 "
        + " / ".join(f"{percentile(by_mode[m].service, 50) * 1000:.2f}" for m in MODES)
        + f" ms); CPU per turn of the request layer, its JSON line and the turn's metrics {observed - bare:.1f} µs "
        f"(bare ASGI app {bare:.1f} µs)" + (f"; {errors} error(s)" if errors else "")
    )
    return Row(
        "observability: logs+metrics per turn (CPU) vs added latency without; +tracing end-to-end",
        f"{observed - bare:.0f} µs = {share:.1%} of {off:.2f} ms; tracing {traced - off:+.2f} ms",
        "logs+metrics ≤ 10% of the added latency",
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
    # In a thread: it runs its own event loop, and this one (the suite's) is running.
    bare, observed = await asyncio.to_thread(layer_cpu_us)
    return cost_row(by_mode, bare, observed)


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
