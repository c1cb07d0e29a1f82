"""The performance scenarios. Each measures the service and the direct call to the same fake upstream in the same run
and returns rows for the table; the orchestration (databases, processes, order) is in bench/suite.py."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.http_client import Client
from bench.measure import (
    UPSTREAM_PATH,
    MemorySampler,
    Samples,
    StreamCheck,
    closed_loop,
    direct_body,
    one_stream,
    paired_latency,
    percentile,
    postgres_cpu_seconds,
    service_client,
    turn_body,
    upstream_client,
)
from bench.report import Row
from bench.stack import Service

FAST = "bench/fast"


@dataclass
class Target:
    service: Service
    upstream_port: int
    secret: str

    def client(self) -> Client:
        return service_client(self.service.port, self.secret)

    def upstream(self) -> Client:
        return upstream_client(self.upstream_port)


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


async def turn_latency(
    target: Target, conversations: Sequence[str], history: Sequence[str], *, count: int, warmup: int
) -> Samples:
    """Sequential non-streamed turns, each on the next conversation, paired with direct calls."""
    service, upstream = target.client(), target.upstream()
    try:
        return await paired_latency(
            service,
            upstream,
            lambda i: turn_body(FAST, conversations[i % len(conversations)]),
            direct_body(FAST, history),
            count=count,
            warmup=warmup,
        )
    finally:
        service.close()
        upstream.close()


def _errors_note(samples: Samples) -> str:
    return f"{samples.errors} error(s), first: {samples.first_error}" if samples.errors else ""


def latency_row(samples: Samples) -> Row:
    p50, p99 = samples.added(50), samples.added(99)
    direct = percentile(samples.direct, 50) * 1000
    service = percentile(samples.service, 50) * 1000
    note = (
        f"n={len(samples.service)}; service p50 {service:.2f} ms vs direct p50 {direct:.3f} ms; "
        f"service p99 {percentile(samples.service, 99) * 1000:.2f} ms. {_errors_note(samples)}"
    )
    passed = p50 <= 2.5 and p99 <= 8 and not samples.errors
    return Row(
        "added latency, 100-item history, sequential",
        f"p50 {_ms(p50)}, p99 {_ms(p99)}",
        "p50 ≤ 2.5 ms, p99 ≤ 8 ms",
        passed,
        note,
    )


def first_turns(samples: Samples, *, warmup: int, uses: int) -> Samples:
    """The samples of the turns that began a conversation, when each conversation takes `uses` turns in a row
    (turn i is on conversation i // uses; the first `warmup` turns were not kept). Those turns read the whole
    history; the others continue a conversation and read only the items its last turn added."""
    kept = [i - warmup for i in range(warmup, warmup + len(samples.service)) if i % uses == 0]
    return Samples(
        service=[samples.service[k] for k in kept if k < len(samples.service)],
        direct=[samples.direct[k] for k in kept if k < len(samples.direct)],
        errors=samples.errors,
        first_error=samples.first_error,
    )


def scaling_rows(by_size: dict[int, Samples], first: dict[int, Samples]) -> list[Row]:
    """`first`: by size, the turns that began a conversation, for sizes where conversations take several turns."""
    figures = {size: samples.added(50) for size, samples in by_size.items()}
    text = ", ".join(f"{size:,}: {_ms(value)}" for size, value in sorted(figures.items()))
    rows = [Row("history scaling (added p50 by item count)", text, "(figures)", None, "")]
    errors = sum(s.errors for s in by_size.values())
    if 10 in figures and 1000 in figures:
        ratio = figures[1000] / figures[10] if figures[10] > 0 else math.inf
        rows.append(Row("history scaling: 1,000 vs 10 items", f"{ratio:.1f}x", "≤ 3x", ratio <= 3 and not errors, ""))
    if 10_000 in figures:
        p99 = by_size[10_000].added(99)
        figure, note = f"p50 {_ms(figures[10_000])}, p99 {_ms(p99)}", f"n={len(by_size[10_000].service)}"
        cold = first.get(10_000)
        if cold is not None and cold.service:
            figure += f"; first turn on a conversation p50 {_ms(cold.added(50))}"
            note += (
                f"; {len(cold.service)} of the turns began a conversation (whole history read), the others "
                "continued one (items added since its last turn read)"
            )
        rows.append(Row("history scaling: 10,000 items", figure, "≤ 30 ms", figures[10_000] <= 30 and not errors, note))
    if errors:
        rows[0].note = "; ".join(_errors_note(s) for s in by_size.values() if s.errors)
    return rows


async def throughput(
    target: Target, conversations: Sequence[str], *, clients: int, duration: float, warmup: float, model: str
) -> tuple[Row, float]:
    """`clients` closed-loop clients, each rotating over its own slice of conversations. Returns the row and the
    service's turns/s."""
    per_client = max(1, len(conversations) // clients)
    own = [conversations[i * per_client : (i + 1) * per_client] for i in range(clients)]
    pool = [target.client() for _ in range(clients)]
    cpu_before = target.service.cpu_seconds()
    database_before = postgres_cpu_seconds()
    try:
        result = await closed_loop(
            pool,
            "/v1/responses",
            lambda i, n: turn_body(model, own[i][n % per_client]),
            duration=duration,
            warmup=warmup,
        )
    finally:
        for client in pool:
            client.close()
    cpu = target.service.cpu_seconds() - cpu_before
    database = postgres_cpu_seconds() - database_before
    workers = target.service.workers
    note = (
        f"p50 {percentile(result.latencies, 50) * 1000:.1f} ms, p99 {percentile(result.latencies, 99) * 1000:.1f} ms; "
        f"service CPU {cpu / max(1, result.all_completed) * 1e6:.0f} µs/turn; "
        f"PostgreSQL CPU {database / max(1, result.all_completed) * 1e6:.0f} µs/turn; "
        f"generator CPU {result.client_cpu / max(1, result.completed) * 1e6:.0f} µs/turn"
    )
    if result.errors:
        note += f"; {result.errors} error(s), first: {result.first_error}"
    row = Row(
        f"throughput, 64 clients, WORKERS={workers}",
        f"{result.rate:.0f} turns/s, p99 {percentile(result.latencies, 99) * 1000:.1f} ms, {result.errors} errors",
        "≥ 800 turns/s, no errors",
        result.rate >= 800 and not result.errors,
        note,
    )
    return row, result.rate


async def direct_throughput(
    upstream_port: int, history: Sequence[str], *, clients: int, duration: float, model: str
) -> Row:
    body = direct_body(model, history)
    pool = [upstream_client(upstream_port) for _ in range(clients)]
    try:
        result = await closed_loop(pool, UPSTREAM_PATH, lambda i, n: body, duration=duration, warmup=1.0)
    finally:
        for client in pool:
            client.close()
    return Row(
        "throughput reference: direct calls, 64 clients",
        f"{result.rate:.0f} req/s, p99 {percentile(result.latencies, 99) * 1000:.1f} ms",
        "(reference)",
        None,
        f"generator CPU {result.client_cpu / max(1, result.completed) * 1e6:.0f} µs/request",
    )


def table_size_row(
    label: str, seconds: dict[str, list[float]], errors: Samples, seed_seconds: float, rows_total: int, *, warmed: bool
) -> Row:
    direct = percentile(seconds["direct"], 50)
    big = (percentile(seconds["big"], 50) - direct) * 1000
    small = (percentile(seconds["small"], 50) - direct) * 1000
    seeded = f"seeded in {seed_seconds:.0f} s" if seed_seconds else "reused seeded table"
    note = (
        f"{rows_total:,} items ({seeded}); n={len(seconds['big'])} turns on each table, interleaved with each "
        f"other and the direct call; small-table added p50 {_ms(small)}; both databases "
        f"{'read into the page cache first (pg_prewarm)' if warmed else 'as they were (no pg_prewarm)'}. "
        f"{_errors_note(errors)}"
    )
    ratio = big / small if small > 0 else math.inf
    return Row(
        f"table size {label}: added p50, 100 items",
        f"{_ms(big)} ({ratio:.2f}x small table)",
        "≤ 1.2x small table",
        ratio <= 1.2 and not errors.errors,
        note,
    )


async def streaming_supported(target: Target, conversation: str) -> tuple[bool, str]:
    client = target.client()
    check = await one_stream(client, "/v1/responses", turn_body(FAST, conversation, stream=True), timeout=30)
    return check.status == 200 and check.completed, check.error or f"status {check.status}"


async def stream_ttfb(
    target: Target, conversations: Sequence[str], history: Sequence[str], *, count: int, warmup: int
) -> Row:
    service, upstream = target.client(), target.upstream()
    try:
        samples = await paired_latency(
            service,
            upstream,
            lambda i: turn_body(FAST, conversations[i % len(conversations)], stream=True),
            direct_body(FAST, history, stream=True),
            count=count,
            warmup=warmup,
            first_byte=True,
        )
    finally:
        service.close()
        upstream.close()
    p50 = samples.added(50)
    note = (
        f"n={len(samples.service)}, 100 items; service TTFB p50 {percentile(samples.service, 50) * 1000:.2f} ms, "
        f"direct {percentile(samples.direct, 50) * 1000:.3f} ms; added p99 {_ms(samples.added(99))}. "
        f"{_errors_note(samples)}"
    )
    return Row(
        "streaming: added time to first byte", f"p50 {_ms(p50)}", "p50 ≤ 3 ms", p50 <= 3 and not samples.errors, note
    )


async def _many_streams(
    clients: Sequence[Client], path: str, bodies: Sequence[bytes]
) -> tuple[list[StreamCheck], float, int]:
    """Run every stream at once; returns the checks, the wall time and the peak number open at once."""
    open_now = 0
    peak = 0

    async def run(client: Client, body: bytes) -> StreamCheck:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            return await one_stream(client, path, body)
        finally:
            open_now -= 1

    started = time.perf_counter()
    checks = await asyncio.gather(*(run(c, b) for c, b in zip(clients, bodies, strict=True)))
    return list(checks), time.perf_counter() - started, peak


async def stream_capacity(
    target: Target, conversations: Sequence[str], *, streams: int, deltas: int, interval_ms: int
) -> list[Row]:
    model = f"bench/paced-{deltas}x{interval_ms}"
    worker = target.service.worker_processes()
    sampler = MemorySampler(lambda: worker, 0.02)
    await asyncio.sleep(0.5)
    rss_before = sum(sampler.sample())
    cpu_before = target.service.cpu_seconds()
    clients = [target.client() for _ in range(streams)]
    bodies = [turn_body(model, conversations[i % len(conversations)], stream=True) for i in range(streams)]
    with sampler:
        checks, wall, peak_open = await _many_streams(clients, "/v1/responses", bodies)
    cpu = target.service.cpu_seconds() - cpu_before
    intact = sum(c.intact(deltas) for c in checks)
    events = sum(c.events for c in checks)
    per_stream_kib = (sampler.peak_total() - rss_before) * 1024 / streams
    cpu_per_event = cpu / max(1, events) * 1e6
    broken = [c for c in checks if not c.intact(deltas)]
    first_broken = ""
    if broken:
        b = broken[0]
        first_broken = (
            f"; first broken stream: status {b.status}, {len(b.deltas)} deltas, ordered={b.ordered}, "
            f"last event {b.last_type or 'none'}, {b.error}"
        )
    # The direct reference: the same streams straight from the fake upstream, to show the generator keeps up.
    direct_clients = [target.upstream() for _ in range(streams)]
    direct_checks, direct_wall, _ = await _many_streams(
        direct_clients, UPSTREAM_PATH, [direct_body(model, [], stream=True)] * streams
    )
    direct_intact = sum(c.intact(deltas) for c in direct_checks)
    note = (
        f"{streams} streams of {deltas} deltas {interval_ms} ms apart on one worker; peak {peak_open} open at once; "
        f"wall {wall:.1f} s (direct {direct_wall:.1f} s, {direct_intact}/{streams} intact); "
        f"{events} events relayed; RSS before {rss_before:.0f} MiB, peak {sampler.peak_total():.0f} MiB; "
        f"CPU counts the whole turn (claim, store, finish) spread over its events; "
        f"TTFB p50 {percentile([c.ttfb for c in checks if c.status == 200], 50) * 1000:.0f} ms, "
        f"p99 {percentile([c.ttfb for c in checks if c.status == 200], 99) * 1000:.0f} ms{first_broken}"
    )
    return [
        Row(
            "streaming capacity: intact streams",
            f"{intact}/{streams} intact",
            f"{streams}, none lost or reordered",
            intact == streams,
            note,
        ),
        Row("streaming capacity: memory per stream", f"{per_stream_kib:.0f} KiB", "≤ 64 KiB", per_stream_kib <= 64, ""),
        Row(
            "streaming capacity: CPU per relayed event", f"{cpu_per_event:.0f} µs", "≤ 100 µs", cpu_per_event <= 100, ""
        ),
    ]


_SUMMARY_LINE = re.compile(r"^\s{2}(?P<label>\S.*?)\s+(?P<p50>\d+\.\d+)\s+/\s+(?P<p95>\d+\.\d+)\s*$")


def admin_listing_rows(output: str, returncode: int | None) -> list[Row]:
    """Rows from `python -m bench.admin_listing` (run as a subprocess, on its own database): its summary lines,
    grouped into the three admin cases of the goals, each reported by its slowest member."""
    groups: dict[str, list[tuple[str, float]]] = {"first page": [], "filtered page": [], "search": []}
    in_summary = False
    for line in output.splitlines():
        if line.startswith("summary"):
            in_summary = True
            continue
        match = _SUMMARY_LINE.match(line) if in_summary else None
        if match is None:
            continue
        label, p50 = match["label"], float(match["p50"])
        if "q=" in label:
            groups["search"].append((label, p50))
        elif "first page" in label:
            groups["first page"].append((label, p50))
        else:
            groups["filtered page"].append((label, p50))
    if not any(groups.values()):
        tail = " ".join(output.strip().splitlines()[-3:])[:300]
        return [
            Row(
                "admin listing, 1M items",
                "not measured",
                "each p50 ≤ 20 ms",
                None,
                f"bench.admin_listing gave no summary (exit {returncode}): {tail}",
            )
        ]
    rows = []
    for name, cases in groups.items():
        if not cases:
            continue
        label, worst = max(cases, key=lambda case: case[1])
        rows.append(
            Row(
                f"admin listing, 1M items: {name} (slowest of {len(cases)})",
                f"p50 {_ms(worst)}",
                "p50 ≤ 20 ms",
                worst <= 20,
                f"slowest: {label}; from python -m bench.admin_listing",
            )
        )
    return rows


_RESPONSE_ID = re.compile(rb'"id":"(resp_[^"]+)"')
_RESUME = "streaming: resume a stored stream, 4x longer vs 1x"


async def stored_stream_resume(target: Target, *, deltas: tuple[int, int], tries: int = 3) -> Row:
    """A client resuming a long stored stream from its start (`GET /v1/responses/{id}?stream=true`), for an answer
    and one four times as long: reading a stored event log must cost in proportion to its length (it was
    quadratic once: zlib handed the whole rest of the log at every call)."""
    client = target.client()
    best: dict[int, float] = {}
    sizes: dict[int, int] = {}
    try:
        for count in deltas:
            check = StreamCheck()
            body = turn_body(f"bench/paced-{count}x0", None, stream=True)
            reply = await client.request("POST", "/v1/responses", body, on_chunk=check.feed, timeout=600)
            found = _RESPONSE_ID.search(check.head)
            if reply.status != 200 or not check.completed or found is None:
                return Row(_RESUME, "error", "≤ 6x", False, check.error)
            path = f"/v1/responses/{found.group(1).decode()}?stream=true&starting_after=0"
            for _ in range(tries):
                resumed = StreamCheck()
                replay = await client.request("GET", path, on_chunk=resumed.feed, timeout=600)
                if replay.status != 200 or not resumed.completed:
                    note = f"HTTP {replay.status} {resumed.error}"
                    return Row(_RESUME, "error", "≤ 6x", False, note)
                best[count] = min(best.get(count, math.inf), replay.seconds)
                sizes[count] = resumed.events
    finally:
        client.close()
    short, long = deltas
    ratio = best[long] / best[short]
    note = (
        f"{sizes[short]:,} and {sizes[long]:,} events resumed from the start in {best[short] * 1000:.0f} and "
        f"{best[long] * 1000:.0f} ms (best of {tries}); a linear read takes about {long / short:.0f}x"
    )
    return Row(_RESUME, f"{ratio:.2f}x", "≤ 6x", ratio <= 6, note)
