"""How much PostgreSQL CPU does each kind of turn cost, with nothing else going on?

Under 64 clients, a chain turn and a branch turn cost PostgreSQL more CPU than a conversation turn
(docs/benchmarks.md), but the throughput rounds mix that with contention: many branches lock the same previous
response, and finishes take turns on their chain's row. Here one client sends turns one at a time through one
pooled connection (DB_POOL_SIZE=1), the three kinds in rounds, on 100-item conversations and on chains of
`--chain-turns` turns (branch turns all continue one response), and the CPU of every PostgreSQL process and of the
service is divided by the turns of each round. psutil reads CPU in 10 ms ticks: use rounds of 1,000 turns or more.

    .venv/bin/python -m bench.experiments.database_cpu_by_turn \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_cpu_by_turn
    git worktree add /tmp/variant <commit>
    .venv/bin/python -m bench.experiments.database_cpu_by_turn --database-url ... --root /tmp/variant

The database is created if missing, migrated and seeded (not wiped); the chains are built again on every
run. The machine's speed moves between runs: compare the kinds within a run, and two checkouts in alternating
runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import msgspec
import uvloop

from bench import seed
from bench.experiments.throughput_ab import _command, _prepared
from bench.http_client import Client
from bench.measure import postgres_cpu_seconds
from bench.seed import ConversationSet
from bench.stack import HOST, Service, start_fake_upstream, start_service
from service.config import normalize_database_url

_MODEL = "bench/fast"
_THREADS = 50
_KINDS = ("conversation", "chain", "branch")


class _Answer(msgspec.Struct):
    id: str


def _body(*, conversation: str | None = None, previous: str | None = None) -> bytes:
    body: dict[str, str] = {"model": _MODEL, "input": "A short question about nothing in particular."}
    if conversation is not None:
        body["conversation"] = conversation
    if previous is not None:
        body["previous_response_id"] = previous
    return msgspec.json.encode(body)


async def _turn(client: Client, body: bytes) -> str:
    reply = await client.request("POST", "/v1/responses", body)
    if reply.status != 200:
        raise RuntimeError(f"{reply.status}: {reply.body[:300]!r}")
    return msgspec.json.decode(reply.body, type=_Answer).id


class _Threads:
    def __init__(self, conversations: list[str], tips: list[str]) -> None:
        self.conversations = conversations
        self.tips = tips  # each chain's newest response, moved on by its chain turns
        self.branch_point = tips[0]  # every branch turn continues the first chain's end as built

    async def one(self, client: Client, kind: str, n: int) -> None:
        index = n % len(self.tips)
        if kind == "conversation":
            await _turn(client, _body(conversation=self.conversations[n % len(self.conversations)]))
        elif kind == "chain":
            self.tips[index] = await _turn(client, _body(previous=self.tips[index]))
        else:
            await _turn(client, _body(previous=self.branch_point))


async def _round(service: Service, client: Client, threads: _Threads, kind: str, turns: int) -> tuple[float, float]:
    """(PostgreSQL CPU, service CPU) per turn, in µs."""
    database, own = postgres_cpu_seconds(), service.cpu_seconds()
    for n in range(turns):
        await threads.one(client, kind, n)
    return (postgres_cpu_seconds() - database) / turns * 1e6, (service.cpu_seconds() - own) / turns * 1e6


async def run(args: argparse.Namespace) -> None:
    conversations = ConversationSet("cpu_by_turn", 100, _THREADS)
    await seed.create_database_if_missing(normalize_database_url(args.database_url))
    url, secret = await _prepared(args.database_url, conversations)
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    service: Service | None = None
    try:
        service = await asyncio.to_thread(
            start_service,
            logs,
            database_url=url,
            upstream_port=upstream.port,
            extra_env={"DB_POOL_SIZE": "1"},
            command=_command(args.root),
        )
        client = Client(HOST, service.port, {"authorization": f"Bearer {secret}"})
        started = time.perf_counter()
        tips = []
        for _ in range(_THREADS):
            tip = await _turn(client, _body())
            for _ in range(args.chain_turns - 1):
                tip = await _turn(client, _body(previous=tip))
            tips.append(tip)
        print(f"built {_THREADS} chains of {args.chain_turns} turns in {time.perf_counter() - started:.0f} s")
        threads = _Threads(conversations.ids(), tips)
        for kind in _KINDS:  # warm-up: plans, caches
            await _round(service, client, threads, kind, 100)
        figures: dict[str, list[tuple[float, float]]] = {kind: [] for kind in _KINDS}
        for number in range(args.rounds):
            for kind in _KINDS:
                figures[kind].append(await _round(service, client, threads, kind, args.turns))
            print(
                f"round {number + 1}: "
                + ", ".join(f"{kind} {figures[kind][-1][0]:.0f} / {figures[kind][-1][1]:.0f} µs" for kind in _KINDS),
                flush=True,
            )
        client.close()
        base = statistics.median(database for database, _ in figures["conversation"])
        for kind in _KINDS:
            database = statistics.median(value for value, _ in figures[kind])
            own = statistics.median(value for _, value in figures[kind])
            print(
                f"{kind:12s} PostgreSQL {database:5.0f} µs/turn ({database / base:.2f}x a conversation turn), "
                f"service {own:5.0f} µs/turn (medians of {args.rounds} rounds of {args.turns})"
            )
    finally:
        if service is not None:
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--root", help="run the service from this checkout")
    parser.add_argument("--turns", type=int, default=1000, help="turns per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chain-turns", type=int, default=50, help="turns each chain is built with")
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
