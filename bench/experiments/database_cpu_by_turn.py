"""How much PostgreSQL CPU does each kind of turn cost, with nothing else going on, and with 64 clients?

Under 64 clients, a chain turn and a branch turn cost PostgreSQL more CPU than a conversation turn
(docs/benchmarks.md), but the throughput rounds mix that with contention: many branches lock the same previous
response, and finishes take turns on their chain's row. By default one client sends turns one at a time through one
pooled connection (DB_POOL_SIZE=1), the three kinds in rounds, on 100-item conversations and on chains of
`--chain-turns` turns (branch turns all continue one response), and the CPU of every PostgreSQL process and of the
service is divided by the turns of each round, as are the write-ahead log's records, full-page images and bytes
(pg_stat_wal) and the rows inserted and updated, HOT or not (pg_stat_user_tables). psutil reads CPU in 10 ms
ticks: use rounds of 1,000 turns or more.

`--clients 64` sends the same rounds from 64 clients on the service's own pool instead, each client on
conversations and chains of its own (4 of each), so that the kinds differ only in what they lock and write.
`--workers` sets the service's WORKERS (as in the two-worker rounds of bench.chains). `--pool-size` sets
DB_POOL_SIZE apart from the clients (one client on 20 connections: the pool hands them out in turn, so every
statement runs on another backend, with no contention).
`--during` runs a command through each kind's round, for a profile of that kind alone: `{kind}` and `{round}`
name the round, `{pids}` the service's worker processes (comma-separated), e.g.
`--during 'perf record -F 499 -a -q -o /tmp/{kind}-{round}.data'` (stopped with SIGINT at the round's end).

    .venv/bin/python -m bench.experiments.database_cpu_by_turn \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_cpu_by_turn [--clients 64 --turns 8000]
    git worktree add /tmp/variant <commit>
    .venv/bin/python -m bench.experiments.database_cpu_by_turn --database-url ... --root /tmp/variant

The database is created if missing and migrated, never wiped: every run seeds conversations and builds chains
of its own, so both start at 100 items. The machine's speed moves between runs: compare the kinds within a run,
and two checkouts in alternating runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import seed
from bench.experiments.throughput_ab import _command, _prepared
from bench.http_client import Client
from bench.measure import postgres_cpu_seconds
from bench.seed import ConversationSet
from bench.stack import HOST, Service, start_fake_upstream, start_service
from service.config import normalize_database_url

_MODEL = "bench/fast"
_THREADS_PER_CLIENT = 4
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
    """Client c of n takes the conversations and chains c, c + n, c + 2n, ... in turn: none is shared."""

    def __init__(self, conversations: list[str], tips: list[str], clients: int) -> None:
        self.conversations = conversations
        self.tips = tips  # each chain's newest response, moved on by its chain turns
        self.branch_point = tips[0]  # every branch turn continues the first chain's end as built
        self.clients = clients

    async def one(self, client: Client, index: int, kind: str, n: int) -> None:
        thread = (index + n * self.clients) % len(self.tips)
        if kind == "conversation":
            await _turn(client, _body(conversation=self.conversations[thread]))
        elif kind == "chain":
            self.tips[thread] = await _turn(client, _body(previous=self.tips[thread]))
        else:
            await _turn(client, _body(previous=self.branch_point))


@dataclass
class _Figures:
    """Per turn: CPU in µs, transactions, write-ahead log in records, full-page images and bytes, and rows
    inserted and updated (of which HOT: an update that is not HOT adds an entry to every index of its table)."""

    database: float
    service: float
    transactions: float
    wal_records: float
    wal_fpi: float
    wal_bytes: float
    inserts: float
    updates: float
    hot_updates: float


# Transactions as the database's statistics count them: the turn path runs each statement in a transaction of its
# own, so this also counts statements.
_COUNTERS = text(
    """
    SELECT (SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
           wal_records, wal_fpi, wal_bytes,
           (SELECT sum(n_tup_ins) FROM pg_stat_user_tables),
           (SELECT sum(n_tup_upd) FROM pg_stat_user_tables),
           (SELECT sum(n_tup_hot_upd) FROM pg_stat_user_tables)
    FROM pg_stat_wal
    """
)


async def _counters(engine: AsyncEngine) -> tuple[float, ...]:
    async with engine.connect() as conn:
        return tuple(float(value) for value in (await conn.execute(_COUNTERS)).one())


def _start_during(template: str | None, service: Service, kind: str, number: int) -> subprocess.Popen[bytes] | None:
    if template is None:
        return None
    pids = ",".join(str(p.pid) for p in service.worker_processes())
    return subprocess.Popen(shlex.split(template.format(kind=kind, round=number, pids=pids)))


def _stop_during(command: subprocess.Popen[bytes] | None) -> None:
    if command is not None and command.poll() is None:
        command.send_signal(signal.SIGINT)
        command.wait(timeout=60)


async def _round(
    service: Service, engine: AsyncEngine, clients: list[Client], threads: _Threads, kind: str, turns: int
) -> _Figures:
    database, own, counted = postgres_cpu_seconds(), service.cpu_seconds(), await _counters(engine)

    per_client = max(1, turns // len(clients))

    async def send(index: int, client: Client) -> None:
        for n in range(per_client):
            await threads.one(client, index, kind, n)

    await asyncio.gather(*(send(index, client) for index, client in enumerate(clients)))
    done = per_client * len(clients)
    database_cpu, own_cpu = postgres_cpu_seconds() - database, service.cpu_seconds() - own
    # An idle backend reports its transactions and WAL to the statistics within 10 s (PGSTAT_IDLE_INTERVAL).
    await asyncio.sleep(11)
    per_turn = [(after - before) / done for before, after in zip(counted, await _counters(engine), strict=True)]
    return _Figures(database_cpu / done * 1e6, own_cpu / done * 1e6, *per_turn)


async def _build_chains(clients: list[Client], per_client: int, turns: int) -> list[str]:
    async def build(client: Client) -> list[str]:
        tips = []
        for _ in range(per_client):
            tip = await _turn(client, _body())
            for _ in range(turns - 1):
                tip = await _turn(client, _body(previous=tip))
            tips.append(tip)
        return tips

    built = await asyncio.gather(*(build(client) for client in clients))
    # Chain c of client i is tips[i + c * clients], as _Threads takes them.
    return [built[index][c] for c in range(per_client) for index in range(len(clients))]


async def run(args: argparse.Namespace) -> None:
    threads_count = max(50, _THREADS_PER_CLIENT * args.clients)
    # Seeded again on every run, as the chains are built again: conversations kept from an earlier run would
    # start longer than the chains (and, past what HISTORY_CACHE_MB holds, read their whole history every turn).
    conversations = ConversationSet(f"cpu_by_turn_{int(time.time())}", 100, threads_count)
    await seed.create_database_if_missing(normalize_database_url(args.database_url))
    url, secret = await _prepared(args.database_url, conversations)
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    engine = seed.engine_for(url)
    service: Service | None = None
    try:
        service = await asyncio.to_thread(
            start_service,
            logs,
            database_url=url,
            upstream_port=upstream.port,
            workers=args.workers,
            extra_env={} if args.pool_size is None else {"DB_POOL_SIZE": str(args.pool_size)},
            command=_command(args.root),
        )
        clients = [Client(HOST, service.port, {"authorization": f"Bearer {secret}"}) for _ in range(args.clients)]
        started = time.perf_counter()
        tips = await _build_chains(clients, threads_count // args.clients, args.chain_turns)
        print(f"built {len(tips)} chains of {args.chain_turns} turns in {time.perf_counter() - started:.0f} s")
        threads = _Threads(conversations.ids(), tips, args.clients)
        for kind in _KINDS:  # warm-up: plans, caches
            await _round(service, engine, clients, threads, kind, max(100, args.turns // 10))
        figures: dict[str, list[_Figures]] = {kind: [] for kind in _KINDS}
        for number in range(args.rounds):
            for kind in _KINDS:
                during = _start_during(args.during, service, kind, number + 1)
                try:
                    figures[kind].append(await _round(service, engine, clients, threads, kind, args.turns))
                finally:
                    _stop_during(during)
            print(
                f"round {number + 1}: "
                + ", ".join(
                    f"{kind} {figures[kind][-1].database:.0f} / {figures[kind][-1].service:.0f} µs" for kind in _KINDS
                ),
                flush=True,
            )
        for client in clients:
            client.close()
        base = statistics.median(f.database for f in figures["conversation"])
        for kind in _KINDS:
            database = statistics.median(f.database for f in figures[kind])
            print(
                f"{kind:12s} PostgreSQL {database:5.0f} µs/turn ({database / base:.2f}x a conversation turn), "
                f"service {statistics.median(f.service for f in figures[kind]):5.0f} µs/turn; "
                f"{statistics.median(f.transactions for f in figures[kind]):.2f} transactions, "
                f"WAL {statistics.median(f.wal_records for f in figures[kind]):.1f} records, "
                f"{statistics.median(f.wal_fpi for f in figures[kind]):.2f} full pages, "
                f"{statistics.median(f.wal_bytes for f in figures[kind]):.0f} bytes; "
                f"{statistics.median(f.inserts for f in figures[kind]):.1f} rows inserted, "
                f"{statistics.median(f.updates for f in figures[kind]):.2f} updated "
                f"({statistics.median(f.hot_updates for f in figures[kind]):.2f} HOT) per turn "
                f"(medians of {args.rounds} rounds of {args.turns})"
            )
    finally:
        await engine.dispose()
        if service is not None:
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--root", help="run the service from this checkout")
    parser.add_argument("--clients", type=int, default=1, help="clients sending at once (1: one pooled connection)")
    parser.add_argument("--pool-size", type=int, help="DB_POOL_SIZE (default: 1 for one client, else the service's)")
    parser.add_argument("--turns", type=int, default=1000, help="turns per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="the service's WORKERS")
    parser.add_argument("--chain-turns", type=int, default=50, help="turns each chain is built with")
    parser.add_argument("--during", help="a command run through each kind's round ({kind}, {round}, {pids})")
    args = parser.parse_args()
    if args.pool_size is None and args.clients == 1:
        args.pool_size = 1
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
