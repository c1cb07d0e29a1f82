"""Memory: idle resident size per worker, and a long mixed run (turns, streams, reads) watching for growth."""

from __future__ import annotations

import asyncio
import time

import msgspec

from bench.http_client import Client
from bench.measure import MemorySampler, one_stream, percentile, turn_body
from bench.report import Row
from bench.scenarios import Target
from bench.stack import Service


def idle_memory_row(service: Service, label: str) -> Row:
    rss = service.rss_mib()
    worst = max(rss) if rss else float("nan")
    return Row(
        f"memory: idle resident per worker ({label})",
        f"{worst:.0f} MiB",
        "≤ 150 MiB",
        worst <= 150,
        f"workers: {', '.join(f'{v:.0f}' for v in rss)} MiB",
    )


async def soak(target: Target, *, seconds: float, streaming: bool, conversations_per_client: int = 20) -> Row:
    """A mixed run: non-streamed turns (new conversations every `conversations_per_client` turns), streamed
    turns, and reads; worker memory sampled throughout."""
    deadline = time.perf_counter() + seconds
    counts = {"turns": 0, "streams": 0, "reads": 0, "errors": 0}
    first_error: list[str] = []

    def fail(what: str) -> None:
        counts["errors"] += 1
        if not first_error:
            first_error.append(what[:200])

    async def new_conversation(client: Client) -> str | None:
        reply = await client.request("POST", "/v1/conversations", b'{"metadata": {"bench": "soak"}}')
        if reply.status != 200:
            fail(f"create conversation: HTTP {reply.status}")
            return None
        return str(msgspec.json.decode(reply.body)["id"])

    async def turns(client: Client, stream: bool) -> None:
        conversation = None
        n = 0
        while time.perf_counter() < deadline:
            try:
                if conversation is None or n % conversations_per_client == 0:
                    conversation = await new_conversation(client)
                    if conversation is None:
                        await asyncio.sleep(0.1)
                        continue
                n += 1
                if stream:
                    check = await one_stream(
                        client, "/v1/responses", turn_body("bench/paced-16x10", conversation, stream=True)
                    )
                    if not check.intact(16):
                        fail(f"stream: {check.error or 'not intact'}")
                    counts["streams"] += 1
                else:
                    reply = await client.request("POST", "/v1/responses", turn_body("bench/latency-10", conversation))
                    if reply.status != 200:
                        fail(f"turn: HTTP {reply.status}")
                    counts["turns"] += 1
                    items = await client.request("GET", f"/v1/conversations/{conversation}/items?limit=20")
                    if items.status != 200:
                        fail(f"list items: HTTP {items.status}")
                    counts["reads"] += 1
            except Exception as exc:
                fail(f"{type(exc).__name__} {exc}")
                await asyncio.sleep(0.1)

    workers = target.service.worker_processes()
    sampler = MemorySampler(lambda: workers, 5.0)
    tasks = [turns(target.client(), False) for _ in range(16)]
    if streaming:
        tasks += [turns(target.client(), True) for _ in range(8)]
    with sampler:
        await asyncio.gather(*tasks)
    samples = [(t, sum(values)) for t, values in sampler.samples]
    if len(samples) < 5:
        return Row("memory: growth across a mixed run", "too short to tell", "no growth", None, "")
    fifth = max(1, len(samples) // 5)
    early = percentile([v for _, v in samples[fifth : 2 * fifth]], 50)  # after the first fifth (warm-up)
    late = percentile([v for _, v in samples[-fifth:]], 50)
    growth = late - early
    note = (
        f"{seconds / 60:.1f} min, {counts['turns']} turns, {counts['streams']} streams, {counts['reads']} reads, "
        f"{counts['errors']} errors{': ' + first_error[0] if first_error else ''}; RSS {early:.0f} → {late:.0f} MiB "
        f"(median of 2nd fifth vs last fifth); peak {max(v for _, v in samples):.0f} MiB"
        + ("" if streaming else "; no streams (streaming not available)")
    )
    return Row(
        "memory: growth across a mixed run",
        f"{growth:+.1f} MiB over {seconds / 60:.0f} min",
        "no growth (≤ +5 MiB) over 10 min",
        (growth <= 5 and counts["errors"] == 0) if seconds >= 600 else None,
        note + ("" if seconds >= 600 else "; shorter than the 10 minutes the bar asks, so no verdict"),
    )
