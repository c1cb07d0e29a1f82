"""Where a non-streamed turn's time goes, in-process: the service's own begin_turn / upstream call / finish_turn
timed one by one (100-item histories unless --size), every SQL statement counted and timed, against the fake
upstream; alternating with the same statements on a raw asyncpg connection (the floor). A profiling aid for
docs/benchmarks.md, not part of `make bench`; it calls the turn loop's functions directly, so it follows their
signatures.

    .venv/bin/python -m bench.turn_phases --database-url postgresql://postgres@127.0.0.1:5432/convstore_h5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
from typing import Any

import uvloop
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import seed
from bench.fake_upstream import FakeUpstream
from bench.seed import ConversationSet
from service.config import Settings, normalize_database_url
from service.db.session import create_engine
from service.migrate import upgrade
from service.responses import service as turns
from service.responses.requests import parse_turn_request
from service.upstream.client import OpenRouterClient


def _count_statements(engine: AsyncEngine, into: dict[str, list[float]]) -> None:
    started: dict[int, float] = {}

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        started[id(conn)] = time.perf_counter()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        into[" ".join(statement.split())[:72]].append((time.perf_counter() - started.pop(id(conn))) * 1000)


_FLOOR_BEGIN = (
    "SELECT id, next_position, turn_response_id FROM conversation WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    "UPDATE conversation SET turn_response_id = $2, turn_expires_at = now() + interval '10 min' WHERE id = $1",
    "SELECT body FROM item WHERE conversation_id = $1 ORDER BY position",
    "INSERT INTO response (id, tenant_id, conversation_id, status, model) VALUES ($1, $2, $3, 'in_progress', 'm')",
    "INSERT INTO item (id, tenant_id, response_id, type, role, status, body) VALUES ($1, $2, $3, 'message', 'user',"
    " 'completed', $4)",
)
_FLOOR_FINISH = (
    "UPDATE conversation SET next_position = next_position + 2, item_count = item_count + 2, updated_at = now(),"
    " turn_response_id = NULL, turn_expires_at = NULL WHERE id = $1 AND turn_response_id = $2 RETURNING next_position",
    "UPDATE item SET conversation_id = $2, position = $3 WHERE response_id = $1 AND is_output = false",
    "INSERT INTO item (id, tenant_id, response_id, is_output, conversation_id, position, type, role, status, body)"
    " VALUES ($1, $2, $3, true, $4, $5, 'message', 'assistant', 'completed', $6)",
    "UPDATE response SET status = 'completed', completed_at = now() WHERE id = $1",
)


async def _floor_turn(conn: Any, tenant_id: str, cid: str) -> tuple[float, float]:
    """The same statements as the turn loop's two transactions, on one raw asyncpg connection: what the
    database round trips cost without the pool, SQLAlchemy and the upstream client."""
    rid = f"resp_floor_{cid}"
    t0 = time.perf_counter()
    async with conn.transaction():
        await conn.fetchrow(_FLOOR_BEGIN[0], cid, tenant_id)
        await conn.execute(_FLOOR_BEGIN[1], cid, rid)
        await conn.fetch(_FLOOR_BEGIN[2], cid)
        await conn.execute(_FLOOR_BEGIN[3], rid, tenant_id, cid)
        await conn.execute(_FLOOR_BEGIN[4], f"{rid}_in", tenant_id, rid, '{"type":"message"}')
    t1 = time.perf_counter()
    async with conn.transaction():
        end = await conn.fetchval(_FLOOR_FINISH[0], cid, rid)
        await conn.execute(_FLOOR_FINISH[1], rid, cid, end - 2)
        await conn.execute(_FLOOR_FINISH[2], f"{rid}_out", tenant_id, rid, cid, end - 1, "{}")
        await conn.execute(_FLOOR_FINISH[3], rid)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


async def run(url: str, count: int, size: int) -> None:
    """Service turns and floor turns alternate, so both see the same machine noise."""
    import asyncpg  # noqa: PLC0415

    await asyncio.to_thread(upgrade, url)
    scratch = seed.engine_for(url)
    tenant_id, _ = await seed.bench_key(scratch)
    suffix = time.time_ns() % 10**6
    conversations = ConversationSet(f"phases{suffix}", size, count + 50)
    floor_conversations = ConversationSet(f"floor{suffix}", size, count + 50)
    await seed.seed(scratch, tenant_id, conversations)
    await seed.seed(scratch, tenant_id, floor_conversations)
    await scratch.dispose()
    fake = FakeUpstream()
    port = await fake.start()
    settings = Settings(
        database_url=url, openrouter_api_key="bench", openrouter_base_url=f"http://127.0.0.1:{port}/api/v1"
    )
    engine = create_engine(url, pool_size=10)
    raw = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    upstream = OpenRouterClient(settings)
    statements: dict[str, list[float]] = collections.defaultdict(list)
    phases: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for index, (conversation_id, floor_id) in enumerate(
            zip(conversations.ids(), floor_conversations.ids(), strict=True)
        ):
            if index == 50:
                _count_statements(engine, statements)
            body = {"model": "bench/fast", "conversation": conversation_id, "input": "hello"}
            request = parse_turn_request(body, max_input_items=settings.max_input_items)
            t0 = time.perf_counter()
            turn = await turns.begin_turn(engine, tenant_id, request, lock_ttl=600)
            t1 = time.perf_counter()
            result = await upstream.create(turn.upstream_body)
            t2 = time.perf_counter()
            outputs = turns.apply_upstream_result(turn.state, result)
            await turns.finish_turn(engine, turn, outputs, upstream_id=result.get("id"))
            t3 = time.perf_counter()
            turn.state.render()
            t4 = time.perf_counter()
            floor_begin, floor_finish = await _floor_turn(raw, tenant_id, floor_id)
            if index >= 50:
                measured = (
                    ("begin", t1 - t0),
                    ("upstream", t2 - t1),
                    ("finish", t3 - t2),
                    ("render", t4 - t3),
                    ("total", t4 - t0),
                )
                for name, seconds in measured:
                    phases[name].append(seconds * 1000)
                phases["floor begin"].append(floor_begin)
                phases["floor finish"].append(floor_finish)
    finally:
        await upstream.aclose()
        await engine.dispose()
        await raw.close()
        await fake.stop()
    print(f"{count} turns, {size}-item histories: the service's turn functions and engine, and (floor) the same")
    print("statements on one raw asyncpg connection, alternating")
    for name, values in phases.items():
        print(f"  {name:12s} p50 {statistics.median(values):6.3f} ms")
    total = 0.0
    for statement, values in statements.items():
        total += sum(values)
        print(f"  {len(values) / count:4.1f}/turn  p50 {statistics.median(values):.3f} ms  {statement}")
    print(f"  SQL statements: {sum(len(v) for v in statements.values()) / count:.1f}/turn, {total / count:.2f} ms/turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=100, help="history items per conversation")
    args = parser.parse_args()
    uvloop.run(run(normalize_database_url(args.database_url), args.count, args.size))


if __name__ == "__main__":
    main()
