"""Do a turn's statements keep a good plan when a connection first planned them on a new database's empty tables?

The service's connections use generic plans and keep each until a table it reads is analyzed again; on a server
with autovacuum off nothing analyzes, and with it on the first analysis comes only after the table has grown. So a
plan made on empty tables is the plan for as long as that lasts. Here one pooled connection (DB_POOL_SIZE=1) plans
every statement of a conversation turn and a chain turn on a new database; the tenant then grows by `--rows`
responses and conversations (inserted directly, no statistics), and the same turns are timed one at a time, with
the pages of `response` and `conversation` (tables and indexes) each turn read (pg_statio_user_tables).

    .venv/bin/python -m bench.experiments.plans_on_new_database \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_new_plans
    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.experiments.plans_on_new_database --database-url ... --root /tmp/before

The database is dropped and created again. With `--root` the service, and the migrations, run from another
checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import msgspec
import uvloop

from bench import seed
from bench.experiments.throughput_ab import _command
from bench.http_client import Client
from bench.stack import HOST, start_fake_upstream, start_service
from service.config import normalize_database_url

# Pages of the two tables the tenant grows, and of their indexes, that statements read (from the cache or not).
_PAGES = """
    SELECT sum(heap_blks_read + heap_blks_hit + coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0))
    FROM pg_statio_user_tables WHERE relname IN ('response', 'conversation')
"""

# The tenant's growth: chains of five responses, and conversations. ($1: the tenant, $2: how many of each.)
_GROW = (
    """INSERT INTO response (id, tenant_id, status, model, thread_id, previous_response_id)
       SELECT 'resp_grown' || n, $1, 'completed', 'm', 'resp_grown' || (n - (n - 1) % 5),
              CASE WHEN n % 5 <> 1 THEN 'resp_grown' || (n - 1) END
       FROM generate_series(1, $2::int) n""",
    "INSERT INTO conversation (id, tenant_id) SELECT 'conv_grown' || n, $1 FROM generate_series(1, $2::int) n",
)


async def _new_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


class _Turns:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.tip: str | None = None

    async def one(self, conversation: str | None) -> float:
        body: dict[str, object] = {"model": "bench/fast", "input": "hello"}
        if conversation is not None:
            body["conversation"] = conversation
        elif self.tip is not None:
            body["previous_response_id"] = self.tip
        started = time.perf_counter()
        reply = await self.client.request("POST", "/v1/responses", msgspec.json.encode(body))
        took = (time.perf_counter() - started) * 1000
        if reply.status != 200:
            raise RuntimeError(f"turn failed: {reply.status} {reply.body[:300]!r}")
        if conversation is None:
            self.tip = msgspec.json.decode(reply.body)["id"]
        return took


async def run(args: argparse.Namespace) -> None:
    plain_url = args.database_url
    url = normalize_database_url(plain_url)
    await _new_database(plain_url)
    if args.root:
        migrate = [sys.executable, "-m", "service", "migrate"]
        subprocess.run(migrate, cwd=args.root, check=True, env={**os.environ, "DATABASE_URL": url})
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    engine = seed.engine_for(url)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    env = {"DB_POOL_SIZE": "1", **({"AUTO_MIGRATE": "false"} if args.root else {})}
    service = await asyncio.to_thread(
        start_service, logs, database_url=url, upstream_port=upstream.port, extra_env=env, command=_command(args.root)
    )
    stats = await asyncpg.connect(plain_url)
    try:
        tenant_id, secret = await seed.bench_key(engine)
        client = Client(HOST, service.port, {"authorization": f"Bearer {secret}"})
        created = await client.request("POST", "/v1/conversations", b"{}")
        conversation = msgspec.json.decode(created.body)["id"]
        turns = _Turns(client)
        for _ in range(3):  # every statement of both kinds of turn, planned on empty tables
            await turns.one(conversation)
            await turns.one(None)
        for statement in _GROW:
            await stats.execute(statement, tenant_id, args.rows)
        for kind, target in (("conversation", conversation), ("chain", None)):
            await asyncio.sleep(1.0)  # the statistics collector's last report
            before = await stats.fetchval(_PAGES)
            took = [await turns.one(target) for _ in range(args.turns)]
            await asyncio.sleep(1.0)
            pages = (await stats.fetchval(_PAGES) - before) / args.turns
            print(
                f"{kind} turns after the tenant grew by {args.rows:,} responses and conversations: "
                f"p50 {statistics.median(took):.2f} ms, p90 {sorted(took)[int(len(took) * 0.9)]:.2f} ms; "
                f"pages of response and conversation (tables and indexes) read per turn {pages:,.0f}",
                flush=True,
            )
    finally:
        await stats.close()
        await engine.dispose()
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="dropped and created again")
    parser.add_argument("--root", help="run the service from this checkout")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--turns", type=int, default=200)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
