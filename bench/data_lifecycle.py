"""The data's whole life, measured: turn latency while the retention purge deletes a million items, a fork of a
10,000-item conversation, and exporting and importing it.

    python -m bench.data_lifecycle --database-url postgresql://postgres@127.0.0.1:5432/bench_lifecycle [--items N]

The database is wiped. Seeded conversations (bench/seed.py) of 100 items each are aged past a 30-day idle policy,
then `POST /admin/retention/run` purges them while turns run on other conversations, one at a time, interleaved
with the same call made directly to the fake upstream; the figure is the latency the service adds, without and
during the purge, from the same run."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import seed
from bench.http_client import Client
from bench.measure import NEW_ITEM, Samples, direct_body, paired_latency, service_client, upstream_client
from bench.report import Row, render
from bench.stack import start_fake_upstream, start_service

MODEL = "openai/gpt-4o-mini"
ADMIN_KEY = "bench-admin-key-data-lifecycle"
HOT = seed.ConversationSet("hot", size=10, count=400)
FORK = seed.ConversationSet("fork", size=10_000, count=1)


def _turn_body(conversation_id: str) -> bytes:
    return b'{"model":"%s","conversation":"%s","input":[%s]}' % (MODEL.encode(), conversation_id.encode(), NEW_ITEM)


async def _age_idle(engine: AsyncEngine, prefix: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE conversation SET updated_at = now() - interval '40 days' WHERE id LIKE :p"),
            {"p": prefix + "%"},
        )


async def _added_latency(
    service_port: int, upstream_port: int, secret: str, history: list[str], count: int, until: asyncio.Task[Any] | None
) -> Samples:
    """Turns interleaved with the direct call: `count` of them, or with `until`, rounds of 20 until it is done."""
    total = Samples()
    warmup = 10
    while True:
        samples = await paired_latency(
            service_client(service_port, secret),
            upstream_client(upstream_port),
            lambda i: _turn_body(HOT.ids()[i % HOT.count]),
            direct_body(MODEL, history),
            count=count if until is None else 20,
            warmup=warmup,
        )
        warmup = 0
        total.service += samples.service
        total.direct += samples.direct
        total.errors += samples.errors
        if until is None or until.done():
            return total


async def _longest_wait(probe: Client, until: asyncio.Task[Any] | None, count: int = 200) -> float:
    """The longest a cheap request (GET /v1/models) waited, in ms, polled every 5 ms: `count` of them, or until
    `until` is done."""
    worst = 0.0
    polled = 0
    while (until is None and polled < count) or (until is not None and not until.done()):
        reply = await probe.request("GET", "/v1/models")
        assert reply.status == 200, reply.body[:300]
        worst = max(worst, reply.seconds)
        polled += 1
        await asyncio.sleep(0.005)
    return worst * 1000


async def _requests_during_a_large_import(client: httpx.AsyncClient, service_port: int, secret: str) -> Row:
    """Another client's requests while the service parses and stores a 50,000-item import (the 10,000-item
    export, five times). The worst wait, not a percentile: a parse holding the event loop delays only the few
    requests then in flight, for as long as it runs."""
    source = FORK.ids()[0]
    lines = (await client.get(f"/v1/conversations/{source}/export")).content.rstrip(b"\n").split(b"\n")
    large = b"\n".join([lines[0], *(lines[1:] * 5)]) + b"\n"
    probe = service_client(service_port, secret)
    quiet = await _longest_wait(probe, None)
    headers = {"Content-Type": "application/jsonl"}
    began = time.perf_counter()
    importing = asyncio.create_task(client.post("/v1/conversations/import", content=large, headers=headers))
    busy = await _longest_wait(probe, importing)
    answer = await importing
    seconds = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    return Row(
        "requests during a 50,000-item import",
        f"longest wait {busy:.0f} ms (quiet: {quiet:.0f} ms)",
        "<= 500 ms",
        busy <= 500,
        f"GET /v1/models every 5 ms on its own connection; the import took {seconds:.1f} s ({len(large) / 2**20:.1f} "
        "MiB). Its file is parsed in a worker thread, which holds the interpreter between switch intervals",
    )


async def main(url: str, items: int, turns: int) -> list[Row]:
    rows: list[Row] = []
    async_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    await seed.create_database_if_missing(async_url)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    upstream = start_fake_upstream(log_dir)
    service = start_service(
        log_dir,
        database_url=url,
        upstream_port=upstream.port,
        extra_env={"ADMIN_API_KEY": ADMIN_KEY, "RETENTION_INTERVAL_SECONDS": "86400", "WEBHOOK_DELIVERY": "false"},
    )
    engine = seed.engine_for(async_url)
    admin = httpx.AsyncClient(base_url=service.base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=3600)
    try:
        await seed.wipe(engine)
        tenant_id, secret = await seed.bench_key(engine)
        idle = seed.ConversationSet("idle", size=100, count=max(1, items // 100))
        started = time.perf_counter()
        for conversations in (idle, HOT, FORK):
            await seed.seed(engine, tenant_id, conversations)
        await _age_idle(engine, idle.prefix)
        await seed.settle(engine)
        print(
            f"seeded {idle.size * idle.count:,} idle items, hot and fork sets in {time.perf_counter() - started:.0f} s"
        )
        history = await seed.history_bodies(engine, HOT.ids()[0])

        policy = {"responses_days": None, "conversations_idle_days": 30}
        assert (await admin.put(f"/admin/tenants/{seed.BENCH_TENANT}/retention", json=policy)).status_code == 200
        preview = (await admin.get(f"/admin/tenants/{seed.BENCH_TENANT}/retention/preview")).json()
        print(f"preview: {preview}")

        quiet = await _added_latency(service.port, upstream.port, secret, history, turns, None)
        purge = asyncio.create_task(admin.post("/admin/retention/run"))
        await asyncio.sleep(0.5)
        busy = await _added_latency(service.port, upstream.port, secret, history, turns, purge)
        result = (await purge).json()
        purge_seconds = float(result["seconds"])  # the run's own time, not the last round of turns after it
        print(f"purge: {result}")
        rate = result["items"] / purge_seconds
        figure = f"{result['items']:,} items, {result['conversations']:,} conversations"
        whole = result["items"] == preview["items"] and result["conversations"] == preview["conversations"]
        rows.append(
            Row("purge", f"{figure} in {purge_seconds:.1f} s ({rate:,.0f} items/s)", "deletes what it previewed", whole)
        )
        rows.append(
            Row(
                "turn during purge",
                f"added p50 {busy.added(50):.1f} ms, p99 {busy.added(99):.1f} ms "
                f"(quiet: p50 {quiet.added(50):.1f}, p99 {quiet.added(99):.1f})",
                "p50 <= 2x quiet + 2 ms, no errors",
                busy.added(50) <= 2 * quiet.added(50) + 2 and busy.errors == 0 and quiet.errors == 0,
                f"{turns} turns before the purge, {len(busy.service)} during it; 10-item histories; each interleaved "
                "with the same call made directly to the fake upstream",
            )
        )

        source = FORK.ids()[0]
        async with engine.connect() as conn:
            last_item = await conn.scalar(
                text("SELECT id FROM item WHERE conversation_id = :c ORDER BY position DESC LIMIT 1"), {"c": source}
            )
        client = httpx.AsyncClient(base_url=service.base, headers={"Authorization": f"Bearer {secret}"}, timeout=600)
        fork_seconds = []
        for _ in range(3):
            began = time.perf_counter()
            answer = await client.post(f"/v1/conversations/{source}/fork", json={"item_id": last_item})
            fork_seconds.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
        fork = statistics.median(fork_seconds)
        rows.append(
            Row(
                "fork 10,000 items",
                f"{fork * 1000:.0f} ms (median of 3; {FORK.size / fork:,.0f} items/s)",
                "<= 2 s",
                fork <= 2.0,
            )
        )

        began = time.perf_counter()
        exported = await client.get(f"/v1/conversations/{source}/export")
        export_seconds = time.perf_counter() - began
        began = time.perf_counter()
        imported = await client.post(
            "/v1/conversations/import", content=exported.content, headers={"Content-Type": "application/jsonl"}
        )
        import_seconds = time.perf_counter() - began
        assert imported.status_code == 200, imported.text
        again = await client.get(f"/v1/conversations/{imported.json()['id']}/export")
        same = len(again.content.split(b"\n")) == len(exported.content.split(b"\n"))
        size = len(exported.content) / 2**20
        rows.append(
            Row(
                "export 10,000 items",
                f"{export_seconds * 1000:.0f} ms ({size:.1f} MiB)",
                "<= 2 s",
                export_seconds <= 2.0,
            )
        )
        rows.append(
            Row(
                "import 10,000 items",
                f"{import_seconds * 1000:.0f} ms",
                "<= 3 s, round trip whole",
                import_seconds <= 3.0 and same,
            )
        )
        rows.append(await _requests_during_a_large_import(client, service.port, secret))
        await client.aclose()
    finally:
        await admin.aclose()
        service.stop()
        upstream.stop()
        await engine.dispose()
    return rows


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database to wipe and use")
    parser.add_argument("--items", type=int, default=1_000_000, help="idle items the purge deletes")
    parser.add_argument("--turns", type=int, default=150, help="measured turns, quiet and during the purge")
    args = parser.parse_args()
    rows = asyncio.run(main(args.database_url, args.items, args.turns))
    print(render(rows))


if __name__ == "__main__":
    cli()
