"""Where a non-streamed turn's time goes, in-process: the service's own begin_turn / upstream call / finish_turn
timed one by one (100-item histories unless --size) against the fake upstream, alternating with the turn loop's
two statements on a raw asyncpg connection without the pool (the floor). A profiling aid for
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
from datetime import UTC, datetime
from typing import Any

import uvloop

from bench import seed
from bench.fake_upstream import FakeUpstream
from bench.seed import ConversationSet
from service.config import Settings, normalize_database_url
from service.db.session import create_engine
from service.ids import new_id
from service.items import normalize_output
from service.migrate import upgrade
from service.responses import service as turns
from service.responses import turn_store
from service.responses.history_cache import HistoryCache
from service.responses.requests import parse_turn_request
from service.upstream.client import OpenRouterClient


async def statements_turn(conn: Any, tenant_id: str, conversation_id: str) -> tuple[float, float]:
    """The turn loop's own two statements (service/responses/turn_store.py) on one raw asyncpg connection: what
    the database costs without the pool checkout, the upstream call and the rest of the turn loop. Returns the
    milliseconds of begin and of finish. bench.plan_cache and bench.schema_ab run their turns with it too."""
    request = parse_turn_request({"model": "m", "conversation": conversation_id, "input": "hello"}, max_input_items=10)
    response = turn_store.NewResponse(
        new_id("resp"), tenant_id, conversation_id, None, "in_progress", "m", None, "{}", {}, False, False
    )
    outcome = turn_store.Outcome(
        response.response_id, tenant_id, "completed", None, None, None, None, None, 1, 1, 0, datetime.now(UTC)
    )
    appended = turn_store.Appended(conversation_id, True, 1, None, "m")
    outputs = normalize_output([_OUTPUT], response_status="completed")
    t0 = time.perf_counter()
    claimed = await turn_store.claim_and_begin(conn, response, request.input_items, ttl_seconds=600, known=None)
    t1 = time.perf_counter()
    assert claimed is not None
    unseen = turn_store.Unseen(response, claimed.created_at, claimed.position, request.input_items)
    await turn_store.finish_in_conversation(conn, outcome, appended, outputs, unseen=unseen)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


_OUTPUT = {
    "type": "message",
    "id": "msg_floor",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "hi", "annotations": []}],
}


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
    histories = HistoryCache(0)  # every turn is on a new conversation: nothing to keep
    phases: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for index, (conversation_id, floor_id) in enumerate(
            zip(conversations.ids(), floor_conversations.ids(), strict=True)
        ):
            body = {"model": "bench/fast", "conversation": conversation_id, "input": "hello"}
            request = parse_turn_request(body, max_input_items=settings.max_input_items)
            t0 = time.perf_counter()
            turn = await turns.begin_turn(engine, tenant_id, request, lock_ttl=600, histories=histories)
            t1 = time.perf_counter()
            result = await upstream.create(turn.take_upstream_body(stream=False))
            t2 = time.perf_counter()
            outputs = turns.apply_upstream_result(turn.state, result)
            await turns.finish_turn(engine, turn, outputs, upstream_id=result.get("id"))
            t3 = time.perf_counter()
            turn.state.render()
            t4 = time.perf_counter()
            floor_begin, floor_finish = await statements_turn(raw, tenant_id, floor_id)
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
    print("two statements on one raw asyncpg connection, alternating")
    for name, values in phases.items():
        print(f"  {name:12s} p50 {statistics.median(values):6.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=100, help="history items per conversation")
    args = parser.parse_args()
    uvloop.run(run(normalize_database_url(args.database_url), args.count, args.size))


if __name__ == "__main__":
    main()
