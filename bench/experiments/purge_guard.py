"""What the retention purge's choice of old responses costs with the guard that keeps a deleted conversation's
history, against the guard before it: `EXPLAIN (ANALYZE)` of a batch's selection, each run rolled back, on an
existing database (bench.admin_listing's by default: 600,000 responses, 500,000 of them in conversations). The
guard looks up each candidate's conversation by primary key, to tell a live conversation (which keeps the
response) from one its tenant deleted (which keeps it only while a later response answered). The third guard
hashes the tenant's deleted conversations once instead: cheaper while they are few, but a tenant that deletes its
conversations and keeps their responses has ever more of them, and past what a hash may hold (`work_mem` times
`hash_mem_multiplier`) the plan tests every candidate against all of them; `--deleted N` marks N of the
tenant's conversations deleted first (rolled back too), `--work-mem` makes that point smaller."""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics

import asyncpg

# The guard of `_DELETE_EXPIRED_RESPONSES` (service/retention/repository.py) before 4133163, as it is since, and
# the hashed alternative.
GUARDS = {
    "before": "AND NOT EXISTS (SELECT 1 FROM item i WHERE i.response_id = r.id AND i.conversation_id IS NOT NULL)",
    "now": """AND NOT EXISTS (SELECT 1 FROM item i JOIN conversation c ON c.id = i.conversation_id
                          WHERE i.response_id = r.id AND (c.deleted_at IS NULL OR EXISTS (
                              SELECT 1 FROM response l
                              WHERE l.conversation_id = c.id AND l.conversation_position > r.conversation_position
                                AND l.status IN ('completed', 'incomplete'))))""",
    "hashed": """AND NOT EXISTS (SELECT 1 FROM item i
                          WHERE i.response_id = r.id AND i.conversation_id IS NOT NULL
                            AND (i.conversation_id NOT IN (SELECT id FROM conversation
                                                           WHERE deleted_at IS NOT NULL AND tenant_id = $1)
                                 OR EXISTS (SELECT 1 FROM response l
                                            WHERE l.conversation_id = i.conversation_id
                                              AND l.conversation_position > r.conversation_position
                                              AND l.status IN ('completed', 'incomplete'))))""",
}

SELECTION = """
    SELECT r.id FROM response r
    WHERE r.tenant_id = $1 AND r.created_at < now() - make_interval(days => $2)
      AND r.status NOT IN ('queued', 'in_progress')
      AND NOT EXISTS (SELECT 1 FROM response c WHERE c.previous_response_id = r.id)
      AND NOT EXISTS (SELECT 1 FROM running_chain_turn n WHERE n.previous_response_id = r.id AND n.expires_at > now())
      {guard}
    ORDER BY r.created_at LIMIT $3 FOR UPDATE SKIP LOCKED
"""


async def _execution_ms(
    conn: asyncpg.Connection, guard: str, tenant: str, days: int, limit: int, deleted: int
) -> tuple[float, bool]:
    """The selection's execution time, and whether its plan hashed a subquery's rows."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        if deleted:
            # As if the tenant had deleted that many conversations that responses keep: marked, and analyzed
            # so that the plan knows (all of it rolled back).
            await conn.execute(
                "UPDATE conversation SET deleted_at = now() WHERE id IN"
                " (SELECT id FROM conversation WHERE tenant_id = $1 ORDER BY id LIMIT $2)",
                tenant,
                deleted,
            )
            await conn.execute("ANALYZE conversation")
        rows = await conn.fetch("EXPLAIN (ANALYZE) " + SELECTION.format(guard=guard), tenant, days, limit)
    finally:
        await transaction.rollback()
    plan = "\n".join(row[0] for row in rows)
    found = re.search(r"Execution Time: ([\d.]+)", plan)
    assert found is not None
    return float(found.group(1)), "hashed SubPlan" in plan


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/convstore_admin_bench")
    parser.add_argument("--tenants", default="ten_bench_000,ten_bench_001")
    parser.add_argument("--days", type=int, default=60, help="the policy's age")
    parser.add_argument("--limit", type=int, default=100, help="responses a batch deletes")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deleted", type=int, default=0, help="conversations of the tenant marked deleted first")
    parser.add_argument("--work-mem", help="the session's work_mem (a small one shows what a hash cannot hold)")
    args = parser.parse_args()
    conn = await asyncpg.connect(args.database_url)
    try:
        if args.work_mem:
            await conn.execute(f"SET work_mem = '{args.work_mem}'")
        for tenant in args.tenants.split(","):
            for _ in range(2):  # alternated, so drift falls on both
                for name, guard in GUARDS.items():
                    runs = [
                        await _execution_ms(conn, guard, tenant, args.days, args.limit, args.deleted)
                        for _ in range(args.runs)
                    ]
                    times = [ms for ms, _ in runs]
                    each = ", ".join(f"{ms:.1f}{' hashed' if hashed else ''}" for ms, hashed in runs)
                    print(f"{tenant} {name}: median {statistics.median(times):.2f} ms ({each})")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
