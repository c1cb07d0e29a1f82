"""`previous_response_id` turns beside conversation turns, in one run, against the direct call.

Every history is built through the service itself (the same items for both kinds of thread), then measured
with the suite's method: requests interleaved with the direct call to the fake upstream, so machine noise falls
on every lane alike, and figures read as same-run ratios.

- latency, sequential, ~100-item histories: a conversation turn, a chain turn continuing its chain's newest
  response (linear), a chain turn continuing one fixed response again and again (branching), the direct call;
- chain length: continuing a 1,000-item chain and a 10-item chain;
- throughput with 64 clients: each client on conversations of its own, on chains of its own, or all on one
  response; with one worker, then with each other worker count of the suite (`--workers`, default 1,2), each on
  threads of its own;
- table size: chain turns on a database with 1M more items (and their responses) beside the small one, and on
  one with 10M (`--huge-database-url`; the suite passes it with BENCH_10M=1): the suite's own big tables, seeded
  once and reused.

    .venv/bin/python -m bench.chains --database-url postgresql://postgres@127.0.0.1:5432/bench_iss17 \
        [--big-database-url postgresql://postgres@127.0.0.1:5432/bench_iss17_1m] \
        [--huge-database-url postgresql://postgres@127.0.0.1:5432/bench_iss17_10m] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import uvloop
from sqlalchemy import text

from bench import report, seed
from bench.http_client import Client, Reply
from bench.measure import UPSTREAM_PATH, USER_TEXT, describe, percentile, postgres_cpu_seconds
from bench.report import Row
from bench.stack import Process, Service, start_fake_upstream, start_service
from bench.suite import Sizes, _prepare, big_table_set
from service.config import normalize_database_url

FAST = "bench/fast"
SLOW = "bench/latency-10"  # the throughput scenarios' upstream, as the suite's
CLIENTS = 64
TURNS_PER_THREAD = 50  # 100-item histories
# In the throughput rounds each client takes its conversations (or chains) in turn, as the suite's throughput
# clients do, and each worker count gets threads of its own, as the suite's do, so that the histories the bars are
# for (100 items) grow by a few items per round rather than doubling over the rounds (how far they grow:
# docs/benchmarks.md). A quick run's rounds are shorter, so fewer threads do.
THREADS_PER_CLIENT = 8
QUICK_THREADS_PER_CLIENT = 4


class _Id(msgspec.Struct):
    id: str = ""


_decode_id = msgspec.json.Decoder(_Id).decode


def _body(model: str, *, conversation: str | None = None, previous: str | None = None) -> bytes:
    body: dict[str, object] = {"model": model, "input": USER_TEXT}
    if conversation is not None:
        body["conversation"] = conversation
    if previous is not None:
        body["previous_response_id"] = previous
    return msgspec.json.encode(body)


def _direct(model: str, history: Sequence[str]) -> bytes:
    new = msgspec.json.encode(
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": USER_TEXT}]}
    )
    head = msgspec.json.encode({"model": model, "store": False, "stream": False})
    return head[:-1] + b',"input":[' + ",".join([*history, new.decode()]).encode() + b"]}"


@dataclass
class Thread:
    """A conversation (its id) or a chain (its newest response, moved on by every turn that continues it)."""

    conversation: str | None = None
    tip: str | None = None
    moves: bool = True  # False: every turn continues the same response (branching)
    turns: int = 0  # answered turns on this thread

    def body(self, model: str) -> bytes:
        return _body(model, conversation=self.conversation, previous=self.tip)

    def answered(self, reply: Reply) -> None:
        self.turns += 1
        if self.conversation is None and self.moves:
            self.tip = _decode_id(reply.body).id


@dataclass
class Lane:
    name: str
    client: Client
    path: str
    threads: list[Thread] = field(default_factory=list)
    fixed_body: bytes = b""  # the direct call's
    model: str = FAST
    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    async def one(self, index: int, *, keep: bool) -> None:
        thread = self.threads[index % len(self.threads)] if self.threads else None
        body = thread.body(self.model) if thread is not None else self.fixed_body
        try:
            reply = await self.client.request("POST", self.path, body)
        except Exception as exc:
            self._error(f"{type(exc).__name__} {exc}")
            return
        if reply.status != 200:
            self._error(describe(reply))
            return
        if thread is not None:
            thread.answered(reply)
        if keep:
            self.seconds.append(reply.seconds)

    def _error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{self.name}: {what[:300]}"

    def p(self, q: float) -> float:
        return percentile(self.seconds, q) * 1000


async def interleaved(lanes: Sequence[Lane], *, count: int, warmup: int) -> None:
    """One request at a time, cycling through the lanes and rotating which goes first."""
    for i in range(warmup + count):
        shift = i % len(lanes)
        for lane in [*lanes[shift:], *lanes[:shift]]:
            await lane.one(i, keep=i >= warmup)


@dataclass
class Loop:
    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    service_cpu: float = 0.0  # µs per turn
    database_cpu: float = 0.0  # PostgreSQL's, µs per turn


async def closed_loop(
    service: Service, port: int, secret: str, threads: list[Thread], seconds: float, warmup: float
) -> Loop:
    """CLIENTS clients, each sending its next turn as soon as the last one answered, client i on its threads
    (threads[i], threads[i + CLIENTS], ...) in turn."""
    clients = [Client("127.0.0.1", port, {"authorization": f"Bearer {secret}"}) for _ in range(CLIENTS)]
    result = Loop()
    done = 0
    cpu_before, database_before = service.cpu_seconds(), postgres_cpu_seconds()
    start = time.perf_counter()
    measure_from, deadline = start + warmup, start + warmup + seconds

    async def run(client: Client, own: list[Thread]) -> None:
        nonlocal done
        turn = 0
        while (now := time.perf_counter()) < deadline:
            thread = own[turn % len(own)]
            turn += 1
            try:
                reply = await client.request("POST", "/v1/responses", thread.body(SLOW))
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__} {exc}"
                continue
            if reply.status != 200:
                result.errors += 1
                result.first_error = result.first_error or describe(reply)
                continue
            thread.answered(reply)
            done += 1
            if now >= measure_from and time.perf_counter() <= deadline:
                result.latencies.append(reply.seconds)

    try:
        await asyncio.gather(*(run(c, threads[i % len(threads) :: CLIENTS]) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            client.close()
    result.rate = len(result.latencies) / seconds
    result.service_cpu = (service.cpu_seconds() - cpu_before) / max(1, done) * 1e6
    result.database_cpu = (postgres_cpu_seconds() - database_before) / max(1, done) * 1e6
    return result


# -- building the threads through the service ---------------------------------------------------------------
async def _build(port: int, secret: str, threads: list[Thread], turns: int) -> None:
    """`turns` turns on each thread, the threads side by side (64 at a time)."""
    limit = asyncio.Semaphore(CLIENTS)

    async def grow(thread: Thread) -> None:
        async with limit:
            client = Client("127.0.0.1", port, {"authorization": f"Bearer {secret}"})
            try:
                for _ in range(turns):
                    reply = await client.request("POST", "/v1/responses", thread.body(FAST))
                    if reply.status != 200:
                        raise RuntimeError(f"building a thread: {describe(reply)}")
                    thread.answered(reply)
            finally:
                client.close()

    await asyncio.gather(*(grow(t) for t in threads))


async def _threads(port: int, secret: str, count: int) -> tuple[list[Thread], list[Thread]]:
    """`count` conversations and `count` chains of TURNS_PER_THREAD turns each, built side by side."""
    conversations = await _new_conversations(port, secret, count)
    chains = [Thread() for _ in range(count)]
    await _build(port, secret, [*conversations, *chains], TURNS_PER_THREAD)
    return conversations, chains


async def _new_conversations(port: int, secret: str, count: int) -> list[Thread]:
    client = Client("127.0.0.1", port, {"authorization": f"Bearer {secret}"})
    try:
        threads = []
        for _ in range(count):
            reply = await client.request("POST", "/v1/conversations", b"{}")
            threads.append(Thread(conversation=_decode_id(reply.body).id))
        return threads
    finally:
        client.close()


async def _chain_history(url: str, response_id: str) -> list[str]:
    """What a turn continuing the response sends before its new input, read the slow way (for the direct call)."""
    engine = seed.engine_for(url)
    try:
        async with engine.connect() as conn:
            ids = []
            current: str | None = response_id
            while current is not None:
                ids.append(current)
                current = await conn.scalar(
                    text("SELECT previous_response_id FROM response WHERE id = :r"), {"r": current}
                )
            bodies: list[str] = []
            for rid in reversed(ids):
                rows = await conn.execute(
                    text("SELECT body FROM item WHERE response_id = :r ORDER BY is_output, ordinal"), {"r": rid}
                )
                bodies += [row[0] for row in rows]
            return bodies
    finally:
        await engine.dispose()


def _history_sizes(conversations: list[Thread], chains: list[Thread]) -> dict[str, str]:
    """The smallest and largest history the throughput threads had grown to, in items (two per turn); a branching
    turn's history is its one fixed response's."""

    def span(threads: list[Thread]) -> str:
        items = [2 * thread.turns for thread in threads]
        return f"{min(items)}-{max(items)}"

    return {"conversation": span(conversations), "chain": span(chains), "branch": str(TURNS_PER_THREAD * 2)}


@contextlib.asynccontextmanager
async def _service(url: str, upstream: Process, logs: Path, workers: int = 1) -> AsyncIterator[Service]:
    service = await asyncio.to_thread(
        start_service, logs, database_url=url, upstream_port=upstream.port, workers=workers
    )
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the scenarios ------------------------------------------------------------------------------------------
async def run(
    url: str,
    big_tables: Sequence[tuple[str, int]],
    *,
    quick: bool,
    logs: Path,
    throughput_workers: Sequence[int] = (1, 2),
) -> list[Row]:
    """`big_tables`: (database URL, items) of each big table to measure chain turns on beside the small one."""
    sizes = Sizes.for_mode(quick, None)
    count, warmup = sizes.latency // 2, max(10, sizes.latency // 20)
    rows: list[Row] = []
    url = normalize_database_url(url)
    _, secret = await _prepare(url, wipe=True)
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    try:
        async with _service(url, upstream, logs) as service:
            per_kind = CLIENTS * (QUICK_THREADS_PER_CLIENT if quick else THREADS_PER_CLIENT)
            _say(
                f"building {per_kind} conversations, {per_kind} chains of {TURNS_PER_THREAD} turns, chains of 500 and 5"
            )
            conversations, chains = await _threads(service.port, secret, per_kind)
            measured_chains = chains[:CLIENTS]
            long_chain, short_chain = Thread(), Thread()
            await _build(service.port, secret, [long_chain], 500)
            await _build(service.port, secret, [short_chain], 5)
            branch = Thread(tip=chains[0].tip, moves=False)
            history = await _chain_history(url, str(branch.tip))

            def client() -> Client:
                return Client("127.0.0.1", service.port, {"authorization": f"Bearer {secret}"})

            upstream_client = Client("127.0.0.1", upstream.port, {"authorization": "Bearer bench"})
            _say(f"latency: {count} turns per lane, interleaved")
            lanes = [
                Lane("conversation", client(), "/v1/responses", conversations[:CLIENTS]),
                Lane("chain", client(), "/v1/responses", chains[:CLIENTS]),
                Lane("branch", client(), "/v1/responses", [branch]),
                Lane("direct", upstream_client, UPSTREAM_PATH, fixed_body=_direct(FAST, history)),
            ]
            await interleaved(lanes, count=count, warmup=warmup)
            rows += _latency_rows(*lanes)

            _say("chain length: 1,000 vs 10 items")
            long_history = await _chain_history(url, str(long_chain.tip))
            short_history = await _chain_history(url, str(short_chain.tip))
            scaling = [
                Lane("chain 1000", client(), "/v1/responses", [long_chain]),
                Lane("chain 10", client(), "/v1/responses", [short_chain]),
                Lane("direct 1000", upstream_client, UPSTREAM_PATH, fixed_body=_direct(FAST, long_history)),
                Lane("direct 10", upstream_client, UPSTREAM_PATH, fixed_body=_direct(FAST, short_history)),
            ]
            await interleaved(scaling, count=count // 2, warmup=warmup)
            rows.append(_length_row(*scaling))
            for lane in lanes + scaling:
                lane.client.close()

            # Short runs of each kind in turn, several rounds: load from elsewhere on the machine falls on all three.
            # The rounds alternate the order (conversation, chain, branch, then branch, chain, conversation), so
            # that a drift over the rounds (the machine, the growing histories and tables) falls on the three kinds
            # alike, rather than always against the kind that runs last.
            # With each of the suite's worker counts, on threads of its own built through it (the first count's
            # are the ones built above).
            rounds = 2 if quick else 4
            for count_index, workers in enumerate(throughput_workers):
                served = contextlib.nullcontext(service) if workers == 1 else _service(url, upstream, logs, workers)
                async with served as target:
                    if count_index > 0:
                        _say(f"building {per_kind} conversations and {per_kind} chains for WORKERS={workers}")
                        conversations, chains = await _threads(target.port, secret, per_kind)
                    kinds = [("conversation", conversations), ("chain", chains), ("branch", [branch])]
                    loops: dict[str, list[Loop]] = {name: [] for name, _ in kinds}
                    for round_ in range(rounds):
                        for name, threads in kinds if round_ % 2 == 0 else kinds[::-1]:
                            _say(
                                f"throughput: {CLIENTS} clients, WORKERS={workers}, {name} turns, "
                                f"round {round_ + 1} of {rounds}"
                            )
                            loops[name].append(
                                await closed_loop(
                                    target, target.port, secret, threads, sizes.throughput_seconds / rounds, 1.0
                                )
                            )
                rows += _throughput_rows(loops, _history_sizes(conversations, chains), workers)

        for big_url, items in big_tables:
            rows.append(
                await _table_size(
                    url, secret, measured_chains, normalize_database_url(big_url), items, upstream, logs, count, warmup
                )
            )
    finally:
        await asyncio.to_thread(upstream.stop)
    return rows


def _errors(*lanes: Lane) -> str:
    return "; ".join(f"{lane.errors} error(s), first: {lane.first_error}" for lane in lanes if lane.errors)


def _latency_rows(conversation: Lane, chain: Lane, branch: Lane, direct: Lane) -> list[Row]:
    added = {
        lane.name: (lane.p(50) - direct.p(50), lane.p(99) - direct.p(99)) for lane in (conversation, chain, branch)
    }
    rows = []
    for lane in (conversation, chain, branch):
        p50, p99 = added[lane.name]
        what = {"conversation": "conversation turn", "chain": "chain turn, linear", "branch": "chain turn, branching"}
        rows.append(
            Row(
                f"added latency, ~100-item history: {what[lane.name]}",
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                "p50 ≤ 2.5 ms, p99 ≤ 8 ms",
                p50 <= 2.5 and p99 <= 8 and not lane.errors,
                f"n={len(lane.seconds)}; service p50 {lane.p(50):.2f} ms, direct p50 {direct.p(50):.3f} ms. "
                + _errors(lane),
            )
        )
    base = added["conversation"][0]
    for name in ("chain", "branch"):
        ratio = added[name][0] / base if base > 0 else float("inf")
        rows.append(
            Row(
                f"added p50, {name} turn / conversation turn (same run)",
                f"{ratio:.2f}x",
                "≤ 1.10x",
                ratio <= 1.10,
                f"{added[name][0]:.2f} ms vs {base:.2f} ms",
            )
        )
    return rows


def _length_row(long: Lane, short: Lane, direct_long: Lane, direct_short: Lane) -> Row:
    long_added, short_added = long.p(50) - direct_long.p(50), short.p(50) - direct_short.p(50)
    ratio = long_added / short_added if short_added > 0 else float("inf")
    return Row(
        "chain length: 1,000-item vs 10-item chain (added p50)",
        f"{ratio:.2f}x ({long_added:.2f} vs {short_added:.2f} ms)",
        "≤ 1.5x",
        ratio <= 1.5 and not (long.errors or short.errors),
        f"n={len(long.seconds)}; direct p50 {direct_long.p(50):.3f} / {direct_short.p(50):.3f} ms. "
        + _errors(long, short),
    )


def _throughput_rows(loops: dict[str, list[Loop]], sizes_after: dict[str, str], workers: int) -> list[Row]:
    setting = "" if workers == 1 else f", WORKERS={workers}"
    rows = []
    rates = {}
    for name, runs in loops.items():
        rates[name] = sum(loop.rate for loop in runs) / len(runs)
        latencies = [value for loop in runs for value in loop.latencies]
        errors = sum(loop.errors for loop in runs)
        by_round = ", ".join(f"{loop.rate:.0f}" for loop in runs)
        note = (
            f"rounds {by_round} turns/s; p50 {percentile(latencies, 50) * 1000:.1f} ms; "
            f"CPU per turn: service {sum(loop.service_cpu for loop in runs) / len(runs):.0f} µs, PostgreSQL "
            f"{sum(loop.database_cpu for loop in runs) / len(runs):.0f} µs; "
            f"histories after the last round {sizes_after[name]} items"
        )
        if errors:
            note += f"; {errors} error(s), first: {next(loop.first_error for loop in runs if loop.errors)}"
        rows.append(
            Row(
                f"throughput, {CLIENTS} clients, {name} turns{setting}",
                f"{rates[name]:.0f} turns/s, p99 {percentile(latencies, 99) * 1000:.1f} ms",
                "≥ 800 turns/s, no errors",
                rates[name] >= 800 and not errors,
                note,
            )
        )
    for name in ("chain", "branch"):
        ratio = rates[name] / rates["conversation"] if rates["conversation"] else 0.0
        rows.append(
            Row(f"throughput, {name} / conversation (same run){setting}", f"{ratio:.2f}x", "≥ 0.90x", ratio >= 0.90, "")
        )
    return rows


async def _table_size(
    small_url: str,
    small_secret: str,
    small_chains: list[Thread],
    big_url: str,
    items: int,
    upstream: Process,
    logs: Path,
    count: int,
    warmup: int,
) -> Row:
    """Chain turns on a database holding `items` more items (seeded once, reused) beside the small one,
    interleaved."""
    _say(f"table size: preparing {big_url.rsplit('/', 1)[-1]}")
    tenant_id, secret = await _prepare(big_url, wipe=False)
    filler = big_table_set(items)
    engine = seed.engine_for(big_url)
    try:
        seeded = await seed.seed(engine, tenant_id, filler)
        if seeded:
            _say(f"table size: seeded {items:,} items in {seeded:.0f} s")
        total = await seed.item_total(engine)
        await seed.prewarm(engine)
    finally:
        await engine.dispose()
    async with _service(big_url, upstream, logs) as big, _service(small_url, upstream, logs) as small:
        big_chains = [Thread() for _ in range(CLIENTS)]
        await _build(big.port, secret, big_chains, TURNS_PER_THREAD)
        history = await _chain_history(big_url, str(big_chains[0].tip))
        lanes = [
            Lane(
                "big", Client("127.0.0.1", big.port, {"authorization": f"Bearer {secret}"}), "/v1/responses", big_chains
            ),
            Lane(
                "small",
                Client("127.0.0.1", small.port, {"authorization": f"Bearer {small_secret}"}),
                "/v1/responses",
                small_chains,
            ),
            Lane(
                "direct",
                Client("127.0.0.1", upstream.port, {"authorization": "Bearer bench"}),
                UPSTREAM_PATH,
                fixed_body=_direct(FAST, history),
            ),
        ]
        # Every chain once before measuring: the small table's service is a new process, its chain cache empty.
        await interleaved(lanes, count=count, warmup=max(warmup, CLIENTS))
        for lane in lanes:
            lane.client.close()
    big_lane, small_lane, direct = lanes
    big_added, small_added = big_lane.p(50) - direct.p(50), small_lane.p(50) - direct.p(50)
    ratio = big_added / small_added if small_added > 0 else float("inf")
    return Row(
        f"table size {total / 1e6:.1f}M items: chain turn added p50 vs small table",
        f"{ratio:.2f}x ({big_added:.2f} vs {small_added:.2f} ms)",
        "≤ 1.2x",
        ratio <= 1.2 and not (big_lane.errors or small_lane.errors),
        f"n={len(big_lane.seconds)}. " + _errors(big_lane, small_lane),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chains", description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/convstore_bench_chains")
    parser.add_argument("--big-database-url", default=None, help="a 1M-item database (seeded once)")
    parser.add_argument("--huge-database-url", default=None, help="a 10M-item database (seeded once)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", default="1,2", help="worker counts for the throughput rounds, as the suite's")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    workers = [int(n) for n in args.workers.split(",")]
    tables = ((args.big_database_url, 1_000_000), (args.huge_database_url, 10_000_000))
    rows = uvloop.run(
        run(
            args.database_url,
            [(url, items) for url, items in tables if url is not None],
            quick=args.quick,
            logs=args.results / "logs",
            throughput_workers=workers,
        )
    )
    print()
    print(report.render(rows))
    print(f"\nchains bench took {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
