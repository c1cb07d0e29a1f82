"""The whole suite in order: seed, start the processes, run each scenario, print one table.

Databases: `database_url` is wiped and seeded for the small-table scenarios; `big_database_url` (1M items) and,
when asked, `huge_database_url` (10M items) are seeded once and reused by later runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import memory, observability_cost, scenarios, seed
from bench.measure import UPSTREAM_PATH, Lane, direct_body, interleaved, turn_body
from bench.report import Row
from bench.scenarios import FAST, Target
from bench.seed import ConversationSet
from bench.stack import ROOT, Process, start_fake_upstream, start_service
from service.config import normalize_database_url
from service.migrate import upgrade


@dataclass(frozen=True)
class Sizes:
    latency: int
    scaling: dict[int, int]  # history size -> measured turns
    throughput_seconds: float
    throughput_warmup: float
    ttfb: int
    streams: int
    soak_seconds: float
    table_size_turns: int

    @staticmethod
    def for_mode(quick: bool, soak_seconds: float | None) -> Sizes:
        if quick:
            return Sizes(300, {10: 200, 1000: 50, 10_000: 12}, 5.0, 2.0, 100, 1000, soak_seconds or 60.0, 200)
        return Sizes(1000, {10: 500, 1000: 150, 10_000: 40}, 15.0, 3.0, 300, 1000, soak_seconds or 600.0, 500)


@dataclass
class Config:
    database_url: str
    big_database_url: str | None
    huge_database_url: str | None
    admin_database_url: str | None = None  # None: bench/admin_listing.py's own default
    quick: bool = False
    soak_seconds: float | None = None
    throughput_workers: Sequence[int] = (1, 2)
    clients: int = 64
    results_dir: Path = Path("bench/results")
    skip: frozenset[str] = frozenset()
    log: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        load = os.getloadavg()[0]
        line = f"[{time.strftime('%H:%M:%S')} load {load:.1f}] {message}"
        self.log.append(line)
        print(line, flush=True)


def _warmup(count: int) -> int:
    return max(5, count // 10)


def _uses_per_conversation(size: int) -> int:
    """Turns per conversation, in a row. A turn adds two items; reusing a conversation is fine while that stays
    well under 1% of its history. The 10,000-item conversations take 4 turns each, as a client continuing them
    would: the first reads the whole history, the others only the items the last one added
    (service/responses/history_cache.py). Their row gives both figures."""
    return max(1, size // 2500)


def big_table_set(items: int) -> ConversationSet:
    """The 100-item conversations that fill a big table (1M or 10M items): seeded once, reused by later runs, and
    by bench.chains, which measures chain turns on the same tables."""
    return ConversationSet(f"big{items // 1_000_000}m", 100, items // 100)


async def _prepare(url: str, *, wipe: bool) -> tuple[str, str]:
    await seed.create_database_if_missing(url)
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    try:
        if wipe:
            await seed.wipe(engine)
        return await seed.bench_key(engine)
    finally:
        await engine.dispose()


async def _seed_sets(url: str, tenant_id: str, sets: Sequence[ConversationSet]) -> float:
    engine = seed.engine_for(url)
    try:
        return sum([await seed.seed(engine, tenant_id, s) for s in sets])
    finally:
        await engine.dispose()


async def _history(url: str, conversation_id: str) -> list[str]:
    engine = seed.engine_for(url)
    try:
        return await seed.history_bodies(engine, conversation_id)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _service(config: Config, url: str, upstream: Process, workers: int = 1) -> AsyncIterator[Target]:
    logs = config.results_dir / "logs"
    service = await asyncio.to_thread(
        start_service, logs, database_url=url, upstream_port=upstream.port, workers=workers
    )
    try:
        yield Target(service, upstream.port, "")
    finally:
        await asyncio.to_thread(service.stop)


async def _warm(target: Target, conversations: Sequence[str], history: Sequence[str]) -> None:
    """Fill pools and import lazily loaded code in every worker before anything is measured."""
    await scenarios.turn_latency(target, conversations, history, count=0, warmup=40)


async def run(config: Config) -> tuple[list[Row], dict[str, object]]:
    sizes = Sizes.for_mode(config.quick, config.soak_seconds)
    rows: list[Row] = []
    (config.results_dir / "logs").mkdir(parents=True, exist_ok=True)
    url = normalize_database_url(config.database_url)

    def wanted(name: str) -> bool:
        return name not in config.skip

    config.say(f"preparing {url.rsplit('/', 1)[-1]} (wiped) and seeding conversations")
    tenant_id, secret = await _prepare(url, wipe=True)
    lat100 = ConversationSet("lat100", 100, sizes.latency + _warmup(sizes.latency) + 40)
    scaling = {
        size: ConversationSet(f"s{size}", size, -(-(n + _warmup(n)) // _uses_per_conversation(size)))
        for size, n in sizes.scaling.items()
    }
    per_client = max(4, round(1000 * (sizes.throughput_seconds + sizes.throughput_warmup) / config.clients / 10))
    throughput_sets = {
        w: ConversationSet(f"tp{w}", 100, config.clients * per_client) for w in config.throughput_workers
    }
    ttfb = ConversationSet("ttfb", 100, sizes.ttfb + _warmup(sizes.ttfb) + 1)
    capacity = ConversationSet("cap", 10, sizes.streams)
    # Fresh 100-item conversations on the small table for each big-table comparison (1M and maybe 10M).
    table_small = ConversationSet("tsmall", 100, 2 * (sizes.table_size_turns + _warmup(sizes.table_size_turns) + 40))
    observability = ConversationSet("obs", 100, observability_cost.conversations_needed(sizes.latency // 2))
    all_sets = [lat100, *scaling.values(), *throughput_sets.values(), ttfb, capacity, table_small, observability]
    seconds = await _seed_sets(url, tenant_id, all_sets)
    config.say(f"seeded {sum(s.size * s.count for s in all_sets):,} items in {seconds:.1f} s")
    histories = {size: await _history(url, s.ids()[0]) for size, s in scaling.items()}
    histories[100] = await _history(url, lat100.ids()[0])

    upstream = await asyncio.to_thread(start_fake_upstream, config.results_dir / "logs")
    try:
        async with _service(config, url, upstream) as target:
            target.secret = secret
            warm_ids = lat100.ids()[-40:]
            await _warm(target, warm_ids, histories[100])
            await asyncio.sleep(1.0)
            rows.append(memory.idle_memory_row(target.service, "after warm-up"))

            config.say("latency: 100-item history, one request at a time")
            samples = await scenarios.turn_latency(
                target, lat100.ids()[:-40], histories[100], count=sizes.latency, warmup=_warmup(sizes.latency)
            )
            rows.append(scenarios.latency_row(samples))

            if wanted("scaling"):
                by_size, first = {100: samples}, {}
                for size, n in sizes.scaling.items():
                    config.say(f"history scaling: {size:,} items")
                    uses = _uses_per_conversation(size)
                    ids = [cid for cid in scaling[size].ids() for _ in range(uses)]
                    by_size[size] = await scenarios.turn_latency(
                        target, ids, histories[size], count=n, warmup=_warmup(n)
                    )
                    if uses > 1:
                        first[size] = scenarios.first_turns(by_size[size], warmup=_warmup(n), uses=uses)
                rows += scenarios.scaling_rows(by_size, first)

            config.say("streaming: probing")
            streaming, why = await scenarios.streaming_supported(target, ttfb.ids()[-1])
            if not streaming:
                reason = f"streaming is not available in the service yet ({why[:160]})"
                rows += [
                    Row("streaming: added time to first byte", "not measured", "p50 ≤ 3 ms", None, reason),
                    Row("streaming capacity", "not measured", "1,000 streams, ≤ 64 KiB, ≤ 100 µs/event", None, reason),
                ]
            else:
                config.say("streaming: time to first byte")
                rows.append(
                    await scenarios.stream_ttfb(
                        target, ttfb.ids()[:-1], histories[100], count=sizes.ttfb, warmup=_warmup(sizes.ttfb)
                    )
                )
                if wanted("capacity"):
                    config.say(f"streaming capacity: {sizes.streams} paced streams")
                    rows += await scenarios.stream_capacity(
                        target, capacity.ids(), streams=sizes.streams, deltas=64, interval_ms=20
                    )
                if wanted("resume"):
                    config.say("streaming: resuming long stored streams")
                    rows.append(await scenarios.stored_stream_resume(target, deltas=(20_000, 80_000)))

        if wanted("observability"):
            config.say("observability: added latency without, with logs and metrics, and with tracing")
            logs = config.results_dir / "logs"
            rows.append(
                await observability_cost.measure(
                    url, upstream, logs, secret, observability.ids(), histories[100], sizes.latency // 2
                )
            )

        if wanted("throughput"):
            config.say("throughput: direct calls to the fake upstream")
            rows.append(
                await scenarios.direct_throughput(
                    upstream.port,
                    histories[100],
                    clients=config.clients,
                    duration=sizes.throughput_seconds,
                    model="bench/latency-10",
                )
            )
            for workers in config.throughput_workers:
                config.say(f"throughput: WORKERS={workers}")
                async with _service(config, url, upstream, workers=workers) as target:
                    target.secret = secret
                    await _warm(target, lat100.ids()[-40:], histories[100])
                    if workers > 1:
                        rows.append(memory.idle_memory_row(target.service, f"WORKERS={workers}"))
                    row, _ = await scenarios.throughput(
                        target,
                        throughput_sets[workers].ids(),
                        clients=config.clients,
                        duration=sizes.throughput_seconds,
                        warmup=sizes.throughput_warmup,
                        model="bench/latency-10",
                    )
                    rows.append(row)

        for label, big_url, items in (
            ("1M", config.big_database_url, 1_000_000),
            ("10M", config.huge_database_url, 10_000_000),
        ):
            if big_url is None or not wanted("tables"):
                if label == "10M" and wanted("tables"):
                    rows.append(
                        Row(
                            "table size 10M: added p50, 100 items",
                            "not measured",
                            "≤ 1.2x small table",
                            None,
                            "opt-in (BENCH_10M=1): seeding 10M items took 357-946 s here, too long for a 15-minute run",
                        )
                    )
                continue
            half = table_small.count // 2
            offset = half if label == "10M" else 0
            small = (url, secret, table_small.ids()[offset : offset + half])
            rows.append(await _table_size(config, label, big_url, items, upstream, small, sizes))

        if wanted("soak"):
            async with _service(config, url, upstream) as target:
                target.secret = secret
                await _warm(target, lat100.ids()[-40:], histories[100])
                config.say(f"memory: mixed run for {sizes.soak_seconds:.0f} s")
                rows.append(await memory.soak(target, seconds=sizes.soak_seconds, streaming=streaming))
    finally:
        await asyncio.to_thread(upstream.stop)

    if wanted("chains"):
        # Last: it wipes the small database and builds its chains and conversations through the service.
        from bench import chains  # noqa: PLC0415  (bench.chains uses this module's helpers)

        config.say("chains: previous_response_id turns beside conversation turns (bench/chains.py)")
        tables = ((config.big_database_url, 1_000_000), (config.huge_database_url, 10_000_000))
        big = [(big_url, items) for big_url, items in tables if big_url is not None and wanted("tables")]
        rows += await chains.run(
            url, big, quick=config.quick, logs=config.results_dir / "logs", throughput_workers=config.throughput_workers
        )
    if wanted("admin"):
        rows += await _admin_listing(config)
    return rows, {"quick": config.quick, "log": config.log}


async def _admin_listing(config: Config) -> list[Row]:
    """bench/admin_listing.py (written alongside this suite) seeds and measures its own 1M-item database; it is
    run as is and its summary folded into the table."""
    if not (ROOT / "bench" / "admin_listing.py").exists():
        return scenarios.admin_listing_rows("", None)
    from bench import admin_listing  # noqa: PLC0415

    url = normalize_database_url(config.admin_database_url or admin_listing.DEFAULT_URL)
    # The script seeds its database when that has no items (~90 s here), as the suite seeds the 1M table: once,
    # reused by later runs. A database with items is never reseeded from here (the script's --reseed wipes it).
    if await seed.has_items(url):
        config.say("admin listing: python -m bench.admin_listing")
    else:
        config.say(f"admin listing: python -m bench.admin_listing, seeding {url.rsplit('/', 1)[-1]} first (once)")
    command = [sys.executable, "-m", "bench.admin_listing", "--no-plans", "--runs", "50" if config.quick else "200"]
    command += ["--database-url", url]
    try:
        done = await asyncio.to_thread(
            subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        return scenarios.admin_listing_rows("timed out after 900 s", None)
    (config.results_dir / "logs" / "admin_listing.log").write_text(done.stdout + done.stderr)
    return scenarios.admin_listing_rows(done.stdout + done.stderr, done.returncode)


async def _table_size(
    config: Config,
    label: str,
    raw_url: str,
    items: int,
    upstream: Process,
    small: tuple[str, str, list[str]],
    sizes: Sizes,
) -> Row:
    """The 100-item turn on the big table and on the small one, both services up at once and their requests
    interleaved with the direct call, so the ratio is not at the mercy of when each ran."""
    url = normalize_database_url(raw_url)
    config.say(f"table size {label}: preparing {url.rsplit('/', 1)[-1]}")
    tenant_id, secret = await _prepare(url, wipe=False)
    big = big_table_set(items)
    engine = seed.engine_for(url)
    try:
        if await seed.seeded_count(engine, big) < big.count:
            config.say(f"table size {label}: seeding {items:,} items (once; reused by later runs)")
            await seed.wipe(engine)
            tenant_id, secret = await seed.bench_key(engine)
        seconds = await seed.seed(engine, tenant_id, big)
        total = await seed.item_total(engine)
        config.say(f"table size {label}: reading both databases into the page cache")
        warmed = await seed.prewarm(engine)
    finally:
        await engine.dispose()
    small_engine = seed.engine_for(small[0])
    try:
        warmed = await seed.prewarm(small_engine) and warmed
    finally:
        await small_engine.dispose()
    if seconds:
        config.say(f"table size {label}: seeded in {seconds:.0f} s")
    # Every measured turn adds 2 items to its conversation: take conversations spread over the whole table and
    # seldom measured before (a random offset each run), so histories stay at 100 and reads are not all cached.
    step = max(1, big.count // (sizes.table_size_turns + 60))
    big_ids = big.ids()[random.randrange(step) :: step]
    history = await _history(url, big_ids[0])
    small_url, small_secret, small_ids = small
    async with (
        _service(config, url, upstream) as big_target,
        _service(config, small_url, upstream) as small_target,
    ):
        big_target.secret, small_target.secret = secret, small_secret
        await _warm(big_target, big_ids[-40:], history)
        await _warm(small_target, small_ids[-40:], history)
        config.say(f"table size {label}: latency, interleaved with the small table and the direct call")
        lanes = [
            Lane("big", big_target.client(), "/v1/responses", lambda i: turn_body(FAST, big_ids[i])),
            Lane("small", small_target.client(), "/v1/responses", lambda i: turn_body(FAST, small_ids[i])),
            Lane("direct", big_target.upstream(), UPSTREAM_PATH, lambda _: direct_body(FAST, history)),
        ]
        seconds_by_lane, errors = await interleaved(
            lanes, count=sizes.table_size_turns, warmup=_warmup(sizes.table_size_turns)
        )
        for lane in lanes:
            lane.client.close()
    return scenarios.table_size_row(label, seconds_by_lane, errors, seconds, total, warmed=warmed)
