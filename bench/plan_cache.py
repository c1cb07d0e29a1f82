"""What PostgreSQL's choice between custom and generic plans costs the turn loop's two statements.

Two raw asyncpg connections, one left at plan_cache_mode=auto and one set to force_generic_plan (what
service/db/session.py asks for), run turns (turn_store's begin and finish) alternately on fresh conversations of
the given size, and each connection's prepared-statement counters show which plans it used. Under `auto` a
connection whose first turns are on short conversations keeps re-planning begin on every turn. A profiling aid
for docs/benchmarks.md, not part of `make bench`.

    .venv/bin/python -m bench.plan_cache --database-url postgresql://postgres@127.0.0.1:5432/convstore_h5 --size 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import asyncpg
import uvloop

from bench import seed
from bench.seed import ConversationSet
from bench.turn_phases import statements_turn
from service.config import normalize_database_url
from service.migrate import upgrade

MODES = ("auto", "force_generic_plan")


async def _plans_used(conn: Any) -> str:
    rows = await conn.fetch(
        "SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements "
        "WHERE (statement LIKE '%claim AS%' OR statement LIKE '%advanced AS%') "
        "AND statement NOT LIKE '%pg_prepared_statements%'"
    )
    parts = []
    for row in rows:
        name = "finish" if "advanced AS" in row["statement"] else "begin"
        parts.append(f"{name}: {row['generic_plans']} generic / {row['custom_plans']} custom")
    return "; ".join(sorted(parts))


async def run(url: str, count: int, size: int) -> None:
    await asyncio.to_thread(upgrade, url)
    scratch = seed.engine_for(url)
    tenant_id, _ = await seed.bench_key(scratch)
    conversations = ConversationSet(f"plans{time.time_ns() % 10**6}", size, count + 20)
    await seed.seed(scratch, tenant_id, conversations)
    await scratch.dispose()
    dsn = url.replace("postgresql+asyncpg", "postgresql")
    conns = {mode: await asyncpg.connect(dsn, server_settings={"plan_cache_mode": mode}) for mode in MODES}
    timings: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in MODES}
    try:
        for index, conversation_id in enumerate(conversations.ids()):
            mode = MODES[index % len(MODES)]
            begin, finish = await statements_turn(conns[mode], tenant_id, conversation_id)
            if index >= 20:
                timings[mode][0].append(begin)
                timings[mode][1].append(finish)
        print(f"{count} turns on {size}-item conversations, alternating between the two connections")
        for mode, (begins, finishes) in timings.items():
            print(
                f"  {mode:19s} begin p50 {statistics.median(begins):.3f} ms, finish p50 "
                f"{statistics.median(finishes):.3f} ms ({await _plans_used(conns[mode])})"
            )
    finally:
        for conn in conns.values():
            await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", type=int, default=10, help="history items per conversation")
    args = parser.parse_args()
    uvloop.run(run(normalize_database_url(args.database_url), args.count, args.size))


if __name__ == "__main__":
    main()
