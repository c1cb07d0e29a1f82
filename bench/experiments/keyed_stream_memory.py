"""What an Idempotency-Key costs a streamed turn in memory: the same streams run at once without, then with, a key
each (new keys every run), and the worker's peak resident memory over its level before, per stream.

    .venv/bin/python -m bench.experiments.keyed_stream_memory \\
        --database-url postgresql://postgres@127.0.0.1:5432/convstore_bench --streams 200 --deltas 512
    git worktree add /tmp/before <commit>
    .venv/bin/python -m bench.experiments.keyed_stream_memory --database-url ... --root /tmp/before

Streams continue no conversation (each starts a chain), so nothing but the streams themselves differs between
the runs. With `--root` the service runs from another checkout (AUTO_MIGRATE is then off: migrate with this one).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

import uvloop

from bench import seed
from bench.experiments.throughput_ab import _command
from bench.http_client import Client
from bench.measure import MemorySampler, one_stream, turn_body
from bench.stack import HOST, Service, start_fake_upstream, start_service
from service.config import normalize_database_url
from service.migrate import upgrade


async def _peak_per_stream_kib(service: Service, secret: str, bodies: list[bytes], *, keyed: bool) -> float:
    worker = service.worker_processes()
    sampler = MemorySampler(lambda: worker, 0.02)
    await asyncio.sleep(1.0)
    before = sum(sampler.sample())
    clients = []
    for _ in bodies:
        headers = {"authorization": f"Bearer {secret}"}
        if keyed:
            headers["idempotency-key"] = f"mem-{uuid.uuid4().hex}"
        clients.append(Client(HOST, service.port, headers))
    with sampler:
        checks = await asyncio.gather(
            *(one_stream(c, "/v1/responses", b) for c, b in zip(clients, bodies, strict=True))
        )
    failed = [c for c in checks if c.status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} stream(s) failed: {failed[0].error}")
    return (sampler.peak_total() - before) * 1024 / len(bodies)


async def run(args: argparse.Namespace) -> None:
    url = normalize_database_url(args.database_url)
    await asyncio.to_thread(upgrade, url)
    engine = seed.engine_for(url)
    try:
        _, secret = await seed.bench_key(engine)
    finally:
        await engine.dispose()
    logs = Path("bench/results/logs")
    logs.mkdir(parents=True, exist_ok=True)
    upstream = await asyncio.to_thread(start_fake_upstream, logs)
    env = {"AUTO_MIGRATE": "false"} if args.root else {}
    service = await asyncio.to_thread(
        start_service, logs, database_url=url, upstream_port=upstream.port, extra_env=env, command=_command(args.root)
    )
    try:
        bodies = [turn_body(f"bench/paced-{args.deltas}x{args.interval_ms}", None, stream=True)] * args.streams
        await _peak_per_stream_kib(service, secret, bodies[:10], keyed=True)  # warm-up: plans, pools
        for number in range(args.rounds):
            plain = await _peak_per_stream_kib(service, secret, bodies, keyed=False)
            keyed = await _peak_per_stream_kib(service, secret, bodies, keyed=True)
            print(
                f"round {number + 1}: {args.streams} streams of {args.deltas} deltas: without a key {plain:.0f} KiB "
                f"per stream, with a key {keyed:.0f} KiB per stream",
                flush=True,
            )
    finally:
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--root", help="run the service from this checkout")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--deltas", type=int, default=512)
    parser.add_argument("--interval-ms", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
