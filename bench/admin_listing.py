"""Admin listing (conversations, threads of both kinds, responses) at a million items: seeds its own database,
prints the plans and p50/p95 of each page.

    .venv/bin/python -m bench.admin_listing [--database-url postgresql://postgres@127.0.0.1:5432/convstore_admin_bench]
                                            [--conversations 100000] [--reseed] [--runs 200]

The database is created if missing and (re)seeded when empty or with --reseed: it is WIPED then. Seeding runs
the migrations up to the one before the admin indexes, bulk-loads tenants, conversations, responses and items
with generate_series (random text from a Zipf-like vocabulary, so some words are everywhere and some rare),
then runs the remaining migrations, which build the admin indexes over the loaded rows.

Each case calls the service function an admin request calls (query + rendering, no HTTP) and reports the
latency over --runs runs after a warm-up, then prints EXPLAIN (ANALYZE, BUFFERS) of its statement.
Bar: p50 <= 20 ms for each case.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.admin import params, repository, service
from service.config import normalize_database_url
from service.db.session import create_engine
from service.migrate import upgrade
from service.threads import repository as thread_repository
from service.threads import service as threads

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/convstore_admin_bench"
BEFORE_ADMIN_INDEXES = "1a7e3c5d9b01"
TENANTS = 50
TURNS_PER_CONVERSATION = 5  # two items each: a user message and the assistant's answer
MODELS = [
    "openai/gpt-4o-mini",
    "openai/gpt-4o",
    "anthropic/claude-sonnet-4",
    "google/gemini-2.5-flash",
    "meta-llama/llama-3.3-70b-instruct",
    "mistralai/mistral-large",
    "deepseek/deepseek-chat",
    "qwen/qwen-2.5-72b-instruct",
]
VOCABULARY_SIZE = 5000
WORDS_PER_ITEM = 12
# Word picks follow pow(random(), 3), so a word's share of items falls with its index.
# The ways a search page is filled, by matching items, are in service/admin/search.py.
RARE_WORD_INDEX = VOCABULARY_SIZE - 10  # ~1,000 items
NEAR_CAP_WORD_INDEX = 1950  # ~1,800 items
ABOVE_CAP_WORD_INDEX = 690  # ~3,500 items
UNDER_SCAN_CAP_WORD_INDEX = 400  # ~5,200 items: just under SEARCH_SCAN_CAP, the longest read of the matches
OVER_SCAN_CAP_WORD_INDEX = 300  # ~6,300 items: just over SEARCH_SCAN_CAP, the longest walk
COMMON_WORD_INDEX = 0  # in about half the items


def vocabulary() -> list[str]:
    rng = random.Random(7)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "ib", "or", "en", "ul"]
    words: set[str] = set()
    while len(words) < VOCABULARY_SIZE:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


SEED_STATEMENTS = [
    """
    INSERT INTO tenant (id, name)
    SELECT 'ten_bench_' || lpad(g::text, 3, '0'), 'tenant-' || lpad(g::text, 3, '0')
    FROM generate_series(0, :tenants - 1) g
    """,
    # Tenant sizes are skewed (a few big tenants, a long tail); activity spreads over 90 days.
    """
    INSERT INTO conversation (id, tenant_id, metadata, created_at, updated_at, title, next_position, item_count,
                              response_count, input_tokens, output_tokens, cost, last_model, last_status)
    SELECT 'conv_bench_' || lpad(g::text, 8, '0'),
           'ten_bench_' || lpad(floor(pow(random(), 2) * :tenants)::int::text, 3, '0'),
           jsonb_build_object('project', 'p' || (g % 40), 'env', CASE WHEN g % 5 = 0 THEN 'dev' ELSE 'prod' END),
           created, created + random() * interval '7 days',
           'Conversation number ' || g, :turns * 2, :turns * 2, :turns,
           :turns * 900, :turns * 300, :turns * 0.0021,
           (CAST(:models AS text[]))[1 + floor(pow(random(), 1.5) * cardinality(CAST(:models AS text[])))::int],
           CASE WHEN random() < 0.03 THEN 'failed' WHEN random() < 0.02 THEN 'incomplete' ELSE 'completed' END
    FROM generate_series(1, :conversations) g,
         LATERAL (SELECT now() - interval '90 days' + random() * interval '83 days' + g * interval '0 seconds')
             AS t(created)
    """,
    """
    INSERT INTO response (id, tenant_id, conversation_id, conversation_position, status, model, upstream_model,
                          input_tokens, output_tokens, cost, created_at, completed_at, error)
    SELECT 'resp_bench_' || substr(c.id, 11) || '_' || k, c.tenant_id, c.id, k * 2,
           CASE WHEN k = :turns - 1 THEN c.last_status ELSE 'completed' END,
           c.last_model, CASE WHEN k = :turns - 1 AND c.last_status = 'failed' THEN NULL ELSE c.last_model END,
           900, 300, 0.0021,
           c.created_at + (c.updated_at - c.created_at) * k / :turns,
           c.created_at + (c.updated_at - c.created_at) * (k + 1) / :turns,
           CASE WHEN k = :turns - 1 AND c.last_status = 'failed'
                THEN '{"code": "server_error", "message": "Provider returned error"}'::jsonb END
    FROM conversation c, generate_series(0, :turns - 1) k
    """,
    # Response chains (previous_response_id, no conversation): one chain per 5 conversations, 5 turns each, the
    # first turns with their own tenant, model, metadata and time; the migration to head files them as threads.
    """
    INSERT INTO response (id, tenant_id, status, model, upstream_model, input_tokens, output_tokens, cost,
                          metadata, created_at, completed_at)
    SELECT 'resp_chain_' || lpad(g::text, 8, '0') || '_0',
           'ten_bench_' || lpad(floor(pow(random(), 2) * :tenants)::int::text, 3, '0'),
           CASE WHEN random() < 0.03 THEN 'failed' ELSE 'completed' END, m.model, m.model, 900, 300, 0.0021,
           jsonb_build_object('project', 'p' || (g % 40), 'env', CASE WHEN g % 5 = 0 THEN 'dev' ELSE 'prod' END),
           created, created + interval '5 seconds'
    FROM generate_series(1, :conversations / 5) g,
         LATERAL (SELECT now() - interval '90 days' + random() * interval '83 days' + g * interval '0 seconds')
             AS t(created),
         LATERAL (SELECT (CAST(:models AS text[]))[
                             1 + floor(pow(random(), 1.5) * cardinality(CAST(:models AS text[])))::int
                         ] || substr(g::text, 1, 0)) AS m(model)
    """,
    """
    INSERT INTO response (id, tenant_id, previous_response_id, status, model, upstream_model, input_tokens,
                          output_tokens, cost, created_at, completed_at)
    SELECT substr(r.id, 1, 19) || '_' || k, r.tenant_id, substr(r.id, 1, 19) || '_' || (k - 1), r.status, r.model,
           r.upstream_model, 900, 300, 0.0021, r.created_at + k * interval '1 hour',
           r.created_at + k * interval '1 hour' + interval '5 seconds'
    FROM response r, generate_series(1, :turns - 1) k
    WHERE r.id LIKE 'resp_chain_%'
    """,
    # One user message and one answer per turn, with random words; g.k keeps the word subquery per row.
    """
    INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, conversation_id, position, type, role,
                      status, body, text_content, created_at)
    SELECT 'msg_bench_' || substr(r.id, 12) || '_' || side, r.tenant_id, r.id, side = 1, 0, r.conversation_id,
           r.conversation_position + side, 'message', CASE side WHEN 0 THEN 'user' ELSE 'assistant' END,
           'completed',
           json_build_object('type', 'message', 'role', CASE side WHEN 0 THEN 'user' ELSE 'assistant' END,
                             'content', json_build_array(json_build_object(
                                 'type', CASE side WHEN 0 THEN 'input_text' ELSE 'output_text' END,
                                 'text', words.txt)))::text,
           words.txt, r.created_at
    FROM response r, generate_series(0, 1) side,
         LATERAL (SELECT string_agg(
                             (CAST(:vocabulary AS text[]))[1 + floor(pow(random(), 3) * :vocabulary_size)::int], ' '
                         ) AS txt
                  FROM generate_series(1, :words + side * 0 + length(r.id) * 0)) AS words
    """,
]


async def _database_exists(server_url: str, name: str) -> bool:
    engine = create_async_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        found = await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if not found:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return bool(found)


async def _item_count(url: str) -> int:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT count(*) FROM item")) or 0)
    except Exception:
        return 0
    finally:
        await engine.dispose()


async def seed(url: str, conversations: int) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await asyncio.to_thread(upgrade, url, BEFORE_ADMIN_INDEXES)
    values = {
        "tenants": TENANTS,
        "conversations": conversations,
        "turns": TURNS_PER_CONVERSATION,
        "models": MODELS,
        "vocabulary": vocabulary(),
        "vocabulary_size": VOCABULARY_SIZE,
        "words": WORDS_PER_ITEM,
    }
    async with engine.begin() as conn:
        for statement in SEED_STATEMENTS:
            started = time.perf_counter()
            result = await conn.execute(text(statement), values)
            print(
                f"  seeded {result.rowcount:>9,} rows in {time.perf_counter() - started:6.1f} s: "
                f"{statement.split('INTO')[1].split('(')[0].strip()}"
            )
    started = time.perf_counter()
    await asyncio.to_thread(upgrade, url, "head")
    print(f"  migrations to head (the admin indexes over the loaded rows) in {time.perf_counter() - started:.1f} s")
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
    await engine.dispose()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    for _ in range(5):
        await call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), _pct(samples, 0.95)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-plans", action="store_true")
    args = parser.parse_args()
    url = normalize_database_url(args.database_url)
    server_url, _, name = url.rpartition("/")
    await _database_exists(server_url + "/postgres", name)
    if args.reseed or await _item_count(url) == 0:
        print(
            f"seeding {name}: {args.conversations:,} conversations, "
            f"{args.conversations * TURNS_PER_CONVERSATION * 2:,} items"
        )
        await seed(url, args.conversations)

    # The service's engine, with its connection settings (no JIT, plan cache mode), as the admin routes use it.
    engine: AsyncEngine = create_engine(url, pool_size=2)
    async with engine.connect() as conn:
        counts = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM tenant), (SELECT count(*) FROM conversation), "
                    "(SELECT count(*) FROM response), (SELECT count(*) FROM item)"
                )
            )
        ).one()
        biggest = await conn.scalar(
            text(
                "SELECT t.name FROM tenant t JOIN conversation c ON c.tenant_id = t.id GROUP BY t.name "
                "ORDER BY count(*) DESC LIMIT 1"
            )
        )
        smallest = await conn.scalar(
            text(
                "SELECT t.name FROM tenant t JOIN conversation c ON c.tenant_id = t.id GROUP BY t.name "
                "ORDER BY count(*) LIMIT 1"
            )
        )
        words = vocabulary()
        rare, near_cap, above_cap, under_scan, over_scan, common = (
            words[i]
            for i in (
                RARE_WORD_INDEX,
                NEAR_CAP_WORD_INDEX,
                ABOVE_CAP_WORD_INDEX,
                UNDER_SCAN_CAP_WORD_INDEX,
                OVER_SCAN_CAP_WORD_INDEX,
                COMMON_WORD_INDEX,
            )
        )
        matches = {}
        for word in (rare, near_cap, above_cap, under_scan, over_scan, common):
            matches[word] = await conn.scalar(
                text("SELECT count(*) FROM item WHERE search_vector @@ websearch_to_tsquery('simple'::regconfig, :w)"),
                {"w": word},
            )
    print(f"\n{counts[0]} tenants, {counts[1]:,} conversations, {counts[2]:,} responses, {counts[3]:,} items")
    print("search words (items containing them): " + ", ".join(f"{w!r} {n:,}" for w, n in matches.items()) + "\n")

    deep_cursor = None
    page: dict[str, Any] = {"next_cursor": None}
    for _ in range(50):
        query = [("cursor", page["next_cursor"])] if page["next_cursor"] else []
        page = await service.list_conversations(engine, query)
    deep_cursor = page["next_cursor"]
    page = {"next_cursor": None}
    for _ in range(50):
        query = [("cursor", page["next_cursor"])] if page["next_cursor"] else []
        page = await threads.list_threads(engine, query)
    deep_thread_cursor = page["next_cursor"]
    two_weeks_ago = (datetime.now(UTC) - timedelta(days=14)).isoformat()
    cases: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("conversations: first page", "conversations", []),
        ("conversations: page 51 (cursor)", "conversations", [("cursor", deep_cursor)]),
        (f"conversations: tenant={biggest} (biggest)", "conversations", [("tenant", biggest)]),
        (f"conversations: tenant={smallest} (smallest)", "conversations", [("tenant", smallest)]),
        ("conversations: status=failed", "conversations", [("status", "failed")]),
        ("conversations: status=in_progress (none running)", "conversations", [("status", "in_progress")]),
        ("conversations: model=qwen/qwen-2.5-72b-instruct", "conversations", [("model", "qwen/qwen-2.5-72b-instruct")]),
        ("conversations: metadata[project]=p7", "conversations", [("metadata[project]", "p7")]),
        ("conversations: created in the last 14 days", "conversations", [("created_after", two_weeks_ago)]),
        ("conversations: tenant + status=failed", "conversations", [("tenant", biggest), ("status", "failed")]),
        (f"conversations: q={rare} (rare word)", "conversations", [("q", rare)]),
        (f"conversations: q={near_cap} (~1,800 items)", "conversations", [("q", near_cap)]),
        (f"conversations: q={above_cap} (~3,500 items)", "conversations", [("q", above_cap)]),
        (f"conversations: q={under_scan} (just under the scan cap)", "conversations", [("q", under_scan)]),
        (f"conversations: q={over_scan} (just over the scan cap)", "conversations", [("q", over_scan)]),
        (f"conversations: q={common} (common word)", "conversations", [("q", common)]),
        (f'conversations: q="{common} {rare}" (phrase)', "conversations", [("q", f'"{common} {rare}"')]),
        (f"conversations: q={rare} + tenant", "conversations", [("q", rare), ("tenant", biggest)]),
        ("threads: first page", "threads", []),
        ("threads: page 51 (cursor)", "threads", [("cursor", deep_thread_cursor)]),
        (f"threads: tenant={biggest} (biggest)", "threads", [("tenant", biggest)]),
        ("threads: status=failed", "threads", [("status", "failed")]),
        ("threads: status=in_progress (none running)", "threads", [("status", "in_progress")]),
        ("threads: kind=chain", "threads", [("kind", "chain")]),
        ("threads: model=qwen/qwen-2.5-72b-instruct", "threads", [("model", "qwen/qwen-2.5-72b-instruct")]),
        ("threads: metadata[project]=p7", "threads", [("metadata[project]", "p7")]),
        ("threads: created in the last 14 days", "threads", [("created_after", two_weeks_ago)]),
        (f"threads: q={rare} (rare word)", "threads", [("q", rare)]),
        (f"threads: q={near_cap} (~1,800 items)", "threads", [("q", near_cap)]),
        (f"threads: q={above_cap} (~3,500 items)", "threads", [("q", above_cap)]),
        (f"threads: q={under_scan} (just under the scan cap)", "threads", [("q", under_scan)]),
        (f"threads: q={over_scan} (just over the scan cap)", "threads", [("q", over_scan)]),
        (f"threads: q={common} (common word)", "threads", [("q", common)]),
        (f'threads: q="{common} {rare}" (phrase)', "threads", [("q", f'"{common} {rare}"')]),
        (f"threads: q={rare} + tenant", "threads", [("q", rare), ("tenant", biggest)]),
        ("responses: first page", "responses", []),
        (f"responses: q={rare} (rare word)", "responses", [("q", rare)]),
        (f"responses: q={above_cap} (~3,500 items)", "responses", [("q", above_cap)]),
        (f"responses: q={under_scan} (just under the scan cap)", "responses", [("q", under_scan)]),
        (f"responses: q={over_scan} (just over the scan cap)", "responses", [("q", over_scan)]),
        (f"responses: q={common} (common word)", "responses", [("q", common)]),
        ("responses: status=failed", "responses", [("status", "failed")]),
        ("responses: model=mistralai/mistral-large", "responses", [("model", "mistralai/mistral-large")]),
    ]
    results = []
    for label, kind, query in cases:
        p50, p95 = await timed(_page_call(engine, kind, query), args.runs)
        results.append((label, p50, p95))
        print(f"{label:<58} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   {'ok' if p50 <= 20 else 'OVER 20 ms'}")
        if not args.no_plans:
            print(await _plan(engine, kind, query))
    print("\nsummary (p50 / p95, ms; bar: p50 <= 20 ms)")
    for label, p50, p95 in results:
        print(f"  {label:<58} {p50:6.2f} / {p95:6.2f}")
    await engine.dispose()
    return 0 if all(p50 <= 20 for _, p50, _ in results) else 1


def _page_call(engine: AsyncEngine, kind: str, query: list[tuple[str, str]]) -> Callable[[], Awaitable[Any]]:
    listing = {
        "conversations": service.list_conversations,
        "threads": threads.list_threads,
        "responses": service.list_responses,
    }[kind]

    async def call() -> Any:
        return await listing(engine, query)

    return call


async def _plan(engine: AsyncEngine, kind: str, query: list[tuple[str, str]]) -> str:
    async with engine.connect() as conn:
        await repository.plan_each_page(conn)  # as the service does
        if kind == "conversations":
            filters, keyset = params.conversation_query(query)
            tenant_id = await repository.find_tenant_id(conn, filters.tenant) if filters.tenant else None
            statement = repository.conversation_pages.bound(filters, tenant_id, keyset)
        elif kind == "threads":
            thread_filters, keyset = params.thread_query(query)
            tenant_id = await repository.find_tenant_id(conn, thread_filters.tenant) if thread_filters.tenant else None
            statement = thread_repository.thread_pages.bound(thread_filters, tenant_id, keyset)
        else:
            response_filters, keyset = params.response_query(query)
            tenant_id = None
            statement = repository.response_pages.bound(response_filters, tenant_id, keyset)
        plan = await repository.explain(conn, statement, "ANALYZE, BUFFERS, COSTS OFF")
    return "\n".join("      " + line for line in plan.splitlines()) + "\n"


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
