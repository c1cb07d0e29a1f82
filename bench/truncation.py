"""What fitting a turn to its model's window costs at 10,000-item conversations (service/context).

`python -m bench.truncation [--database-url postgresql://…/bench_db] [--turns 30]` (the database is wiped).

Three kinds of turn, one request at a time and interleaved so that machine noise falls on each alike, each on
its own 10,000-item conversations (seeded like the suite's), beside the direct call with the same history:
- `unknown`: a model with no known window: the turn path as it is without this feature (nothing counted);
- `auto, fits`: `truncation: "auto"`, a pinned window the history fits in: everything is counted, nothing cut;
- `auto, cuts`: `truncation: "auto"`, a pinned 32,000-token window: the history (~300,000 tokens) is cut.
The bar: a turn with truncation "auto" takes at most 1.2x the time of one without.
Before those, the first turn on each conversation in the freshly started worker (cold: it holds neither the
history nor its counts) is timed apart, one at a time, the median of three conversations per lane; and the same
for a fourth set, `auto, cuts, no stored counts`, whose items' stored token counts were removed (as items stored
before counts were kept): there the worker tokenizes the whole history, as every cold worker once did. The
cold bar: a cold "auto" turn takes at most 1.2x the cold turn without.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import msgspec
import uvloop
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import report, seed
from bench.measure import UPSTREAM_PATH, Lane, direct_body, interleaved, percentile, service_client, upstream_client
from bench.report import Row
from bench.seed import ConversationSet
from bench.stack import start_fake_upstream, start_service
from service.config import normalize_database_url
from service.migrate import upgrade

UNKNOWN, WIDE, NARROW = "bench/unknown-window", "bench/wide-window", "bench/narrow-window"
PINNED = f"{WIDE}=100000000,{NARROW}=32000"
SIZE = 10_000
CONVERSATIONS_PER_LANE = 3


def _body(model: str, conversation_id: str, truncation: str | None) -> bytes:
    body: dict[str, object] = {"model": model, "input": "One more question.", "conversation": conversation_id}
    if truncation:
        body["truncation"] = truncation
    return msgspec.json.encode(body)


async def main(database_url: str, turns: int, results: Path) -> list[Row]:
    url = normalize_database_url(database_url)
    await seed.create_database_if_missing(url)
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    try:
        await seed.wipe(engine)
        tenant_id, secret = await seed.bench_key(engine)
        sets = {name: ConversationSet(f"tr{name}", SIZE, CONVERSATIONS_PER_LANE) for name in ("u", "w", "n", "l")}
        for conversations in sets.values():
            await seed.seed(engine, tenant_id, conversations)
        await _forget_counts(engine, sets["l"])
        history = await seed.history_bodies(engine, sets["u"].ids()[0])
    finally:
        await engine.dispose()
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    service = await asyncio.to_thread(
        start_service,
        logs,
        database_url=url,
        upstream_port=upstream.port,
        extra_env={"MODEL_CONTEXT_WINDOWS": PINNED, "HISTORY_CACHE_MB": "128"},
    )
    client, direct = service_client(service.port, secret), upstream_client(upstream.port)
    try:
        plan = {
            "unknown": (UNKNOWN, sets["u"], None),
            "auto, fits": (WIDE, sets["w"], "auto"),
            "auto, cuts": (NARROW, sets["n"], "auto"),
        }
        cold_plan = {**plan, "auto, cuts, no stored counts": (NARROW, sets["l"], "auto")}
        cold: dict[str, list[float]] = {name: [] for name in cold_plan}
        for model in (UNKNOWN, NARROW):  # the process's own first turn (connections, model catalog) is not timed
            body = msgspec.json.encode({"model": model, "input": "Warm up.", "store": False})
            await client.request("POST", "/v1/responses", body)
        for index in range(CONVERSATIONS_PER_LANE):
            for name, (model, conversations, truncation) in cold_plan.items():
                started = time.perf_counter()
                body = _body(model, conversations.ids()[index], truncation)
                reply = await client.request("POST", "/v1/responses", body)
                cold[name].append(time.perf_counter() - started)
                if reply.status != 200:
                    raise RuntimeError(f"{name}: HTTP {reply.status} {reply.body[:300]!r}")
        lanes = [
            Lane(
                name,
                client,
                "/v1/responses",
                lambda i, m=model, c=conversations, t=truncation: _body(m, c.ids()[i % CONVERSATIONS_PER_LANE], t),
            )
            for name, (model, conversations, truncation) in plan.items()
        ]
        direct_request = direct_body("bench/fast", history)
        lanes.append(Lane("direct", direct, UPSTREAM_PATH, lambda _: direct_request))
        seconds, errors = await interleaved(lanes, count=turns, warmup=3)
    finally:
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)
        client.close()
        direct.close()
    p50 = {name: percentile(values, 50) * 1000 for name, values in seconds.items()}
    rows = [
        Row(
            "10,000-item turn p50 (ms)",
            ", ".join(f"{name} {value:.1f}" for name, value in p50.items()),
            "(figures)",
            None,
            f"n={turns} each",
        ),
        Row(
            "10,000-item first turn in a worker, median of 3 (ms)",
            ", ".join(f"{name} {statistics.median(values) * 1000:.0f}" for name, values in cold.items()),
            "(figures)",
            None,
            "; ".join(f"{name}: " + ", ".join(f"{v * 1000:.0f}" for v in values) for name, values in cold.items()),
        ),
    ]
    cold_none = statistics.median(cold["unknown"])
    for name in ("auto, fits", "auto, cuts"):
        ratio = statistics.median(cold[name]) / cold_none
        rows.append(Row(f"cold truncation {name} vs none", f"{ratio:.2f}x", "≤ 1.2x", ratio <= 1.2, ""))
    for name in ("auto, fits", "auto, cuts"):
        ratio = p50[name] / p50["unknown"]
        rows.append(
            Row(f"truncation {name} vs none", f"{ratio:.2f}x", "≤ 1.2x", ratio <= 1.2 and not errors.errors, "")
        )
    if errors.errors:
        rows[0].note += f"; {errors.errors} error(s), first: {errors.first_error}"
    return rows


async def _forget_counts(engine: AsyncEngine, conversations: ConversationSet) -> None:
    """The set's items as stored before token counts were kept."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE item SET token_count = NULL WHERE conversation_id LIKE :p"), {"p": conversations.prefix + "%"}
        )
    await seed.settle(engine)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.truncation", description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/convstore_bench_truncation")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = uvloop.run(main(args.database_url, args.turns, args.results))
    print(report.render(rows))


if __name__ == "__main__":
    cli()
