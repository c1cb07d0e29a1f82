"""Two service instances, A and B, loaded in turn for short slices: which one gets more turns/s through.

A 5-second throughput run moved by ±15% between runs of the same code on this machine (docs/benchmarks.md), more
than most changes worth trying. Here both instances run at once on one database, each on its own conversations,
and the 64 clients load one, then the other, slice after slice, so a change of machine speed falls on both. Each
side is configured by its environment (`--a-env`, `--b-env`, e.g. `DB_POOL_SIZE=8`), B may have a database of its
own (`--b-database-url`, e.g. one without an index), and either side may run another checkout
of the code (`--b-root`, e.g. a `git worktree` of a variant; with one worker only: uvicorn's spawned workers were
seen importing this checkout). The PostgreSQL CPU of a slice is the loaded side's.
A profiling aid, not part of `make bench`; the database is migrated and seeded, not wiped. The conversations are
kept for the next run (`--tag` seeds new ones), so they grow by every run's turns: compare A and B within a run.

    .venv/bin/python -m bench.experiments.throughput_ab \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_h5 \\
        --b-env DB_POOL_SIZE=8 --workers 2
    git worktree add /tmp/before HEAD~1
    .venv/bin/python -m bench.experiments.throughput_ab --database-url ... --a-root /tmp/before --workers 1 --rounds 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import uvloop

from bench import scenarios, seed
from bench.measure import closed_loop, postgres_cpu_seconds, turn_body
from bench.seed import ConversationSet
from bench.stack import Service, start_fake_upstream, start_service
from service.config import normalize_database_url
from service.migrate import upgrade

_MODEL = "bench/latency-10"


def _command(root: str | None) -> list[str] | None:
    """`python -m service serve` from another checkout: its directory replaces the current one on sys.path."""
    if root is None:
        return None
    start = (
        f"import runpy, sys; sys.path[0] = {root!r}; sys.argv[1:] = ['serve']; "
        "runpy.run_module('service', run_name='__main__')"
    )
    return [sys.executable, "-c", start, "serve"]


def _env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


async def _slice(
    target: scenarios.Target, conversations: list[str], start: int, seconds: float
) -> tuple[float, float, float]:
    """(turns/s, service CPU µs/turn, PostgreSQL CPU µs/turn) of one slice; clients start at `start` in their
    own conversations so no conversation is reused before every other one was."""
    clients = [target.client() for _ in range(64)]
    per_client = len(conversations) // 64
    cpu, database = target.service.cpu_seconds(), postgres_cpu_seconds()
    try:
        result = await closed_loop(
            clients,
            "/v1/responses",
            lambda i, n: turn_body(_MODEL, conversations[i * per_client + (start + n) % per_client]),
            duration=seconds,
            warmup=0.5,
        )
    finally:
        for client in clients:
            client.close()
    if result.errors:
        raise RuntimeError(f"{result.errors} error(s): {result.first_error}")
    turns = max(1, result.all_completed)
    return (
        result.rate,
        (target.service.cpu_seconds() - cpu) / turns * 1e6,
        (postgres_cpu_seconds() - database) / turns * 1e6,
    )


async def _prepared(database_url: str, conversations: ConversationSet) -> tuple[str, str]:
    """Migrate and seed one side's database; returns its URL (normalized) and a bench key's secret."""
    url = normalize_database_url(database_url)
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    try:
        tenant_id, secret = await seed.bench_key(engine)
        await seed.seed(engine, tenant_id, conversations)  # nothing to do when an earlier run seeded it
    finally:
        await engine.dispose()
    return url, secret


async def run(args: argparse.Namespace) -> None:
    sets = {side: ConversationSet(f"ab{side}{args.tag}", 100, 64 * args.per_client) for side in "ab"}
    urls: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for side, database_url in (("a", args.database_url), ("b", args.b_database_url or args.database_url)):
        urls[side], secrets[side] = await _prepared(database_url, sets[side])
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    services: dict[str, Service] = {}
    try:
        for side, env, root in (("a", args.a_env, args.a_root), ("b", args.b_env, args.b_root)):
            services[side] = await asyncio.to_thread(
                start_service,
                logs,
                database_url=urls[side],
                upstream_port=upstream.port,
                workers=args.workers,
                extra_env=_env(env),
                command=_command(root),
            )
        targets = {side: scenarios.Target(service, upstream.port, secrets[side]) for side, service in services.items()}
        ids = {side: conversation_set.ids() for side, conversation_set in sets.items()}
        figures: dict[str, list[tuple[float, float, float]]] = {"a": [], "b": []}
        for side in "ab":  # warm-up: plans, pools, caches
            await _slice(targets[side], ids[side], 0, 1.0)
        for number in range(args.rounds):
            order = "ab" if number % 2 == 0 else "ba"
            for side in order:
                figures[side].append(await _slice(targets[side], ids[side], (number + 1) * 4, args.slice))
            a, b = figures["a"][-1], figures["b"][-1]
            print(
                f"round {number + 1:2d}: A {a[0]:6.0f} turns/s  B {b[0]:6.0f} turns/s  B/A {b[0] / a[0]:.3f}",
                flush=True,
            )
        ratios = [b[0] / a[0] for a, b in zip(figures["a"], figures["b"], strict=True)]
        for side in "ab":
            rates, service_cpu, database_cpu = zip(*figures[side], strict=True)
            print(
                f"{side.upper()}: median {statistics.median(rates):.0f} turns/s (min {min(rates):.0f}, max "
                f"{max(rates):.0f}); service CPU {statistics.median(service_cpu):.0f} µs/turn, PostgreSQL CPU "
                f"{statistics.median(database_cpu):.0f} µs/turn"
            )
        print(f"B/A per round: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    finally:
        for service in services.values():
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--b-database-url", help="B's database, e.g. a copy with a schema change (default: A's)")
    parser.add_argument("--a-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--a-root", help="run A from this checkout")
    parser.add_argument("--b-root", help="run B from this checkout")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--slice", type=float, default=3.0, help="seconds of load per side per round")
    parser.add_argument("--per-client", type=int, default=40, help="conversations per client and side")
    parser.add_argument("--tag", default="", help="names the seeded conversation sets (reused when they exist)")
    args = parser.parse_args()
    if (args.a_root or args.b_root) and args.workers != 1:
        parser.error("--a-root and --b-root need --workers 1")
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
