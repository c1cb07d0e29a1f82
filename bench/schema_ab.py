"""What a schema change does to PostgreSQL's own CPU per turn, A/B on two copies of one database.

Both copies are made from a seeded bench database (`--template`, e.g. the one `make bench` left behind); the DDL
given is applied to copy B only. The turn loop's two statements (turn_store's begin and finish) then run on both
copies, alternating turn by turn on the same conversations, and the CPU of each copy's backend process is read
from /proc around every turn, so drift on a noisy machine falls on both sides. Always run a no-op control too
(`"SELECT 1"`): here the two backends differed by 11-16% with no change at all, whichever copy was made first,
which is more than the changes tried (docs/benchmarks.md); read a change against the control. A profiling aid,
not part of `make bench`; the copies are dropped at the end.

    .venv/bin/python -m bench.schema_ab --template convstore_h5 "SELECT 1"
    .venv/bin/python -m bench.schema_ab --template convstore_h5 "DROP INDEX ix_conversation_metadata"
"""

from __future__ import annotations

import argparse

import asyncpg
import psutil
import uvloop

from bench.turn_phases import statements_turn


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def run(server: str, template: str, ddl: str, turns: int) -> None:
    admin = await asyncpg.connect(f"{server}/postgres")
    copies = (f"{template}_ab_a", f"{template}_ab_b")
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", template)
        for name in copies:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        conns = [
            await asyncpg.connect(f"{server}/{name}", server_settings={"plan_cache_mode": "force_generic_plan"})
            for name in copies
        ]
        for statement in ddl.split(";"):
            if statement.strip():
                await conns[1].execute(statement)
        tenant_id = await conns[0].fetchval("SELECT id FROM tenant LIMIT 1")
        conversations = [
            row[0]
            for row in await conns[0].fetch(
                "SELECT id FROM conversation WHERE item_count BETWEEN 100 AND 140 AND turn_response_id IS NULL "
                "ORDER BY random() LIMIT $1",
                turns + 100,
            )
        ]
        backends = [psutil.Process(await conn.fetchval("SELECT pg_backend_pid()")) for conn in conns]
        cpu, wall = [0.0, 0.0], [0.0, 0.0]
        for index, conversation_id in enumerate(conversations):
            for side in (0, 1) if index % 2 else (1, 0):
                before = _cpu(backends[side])
                begin_ms, finish_ms = await statements_turn(conns[side], tenant_id, conversation_id)
                if index >= 100:  # the first turns warm both backends' caches
                    cpu[side] += _cpu(backends[side]) - before
                    wall[side] += (begin_ms + finish_ms) / 1000
        measured = len(conversations) - 100
        print(f"{measured} turns on each copy of {template}, alternating")
        for label, side in (("A (as is)", 0), (f"B ({ddl})", 1)):
            print(
                f"  {label}: backend CPU {cpu[side] / measured * 1e6:.0f} µs/turn, "
                f"wall {wall[side] / measured * 1e3:.2f} ms/turn"
            )
        for conn in conns:
            await conn.close()
    finally:
        for name in copies:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ddl", help="statements applied to copy B, separated by ';'")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--template", required=True, help="a seeded bench database to copy")
    parser.add_argument("--turns", type=int, default=1100)
    args = parser.parse_args()
    uvloop.run(run(args.server, args.template, args.ddl, args.turns))


if __name__ == "__main__":
    main()
