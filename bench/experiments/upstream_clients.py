"""The upstream hop alone: CPU per request of candidate HTTP clients posting a 100-item turn body to the fake
upstream with 64 requests in flight. It answered which client the service should use (httpx-aiohttp, now a
dependency); clients whose package is not installed are skipped.

    .venv/bin/python -m bench.experiments.upstream_clients
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop

from bench.measure import UPSTREAM_PATH, direct_body
from bench.stack import HOST, start_fake_upstream

Send = Callable[[bytes], Awaitable[int]]


def _history(items: int) -> list[str]:
    text = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt " * 3
    return [
        f'{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{i} {text}"}}]}}'
        for i in range(items)
    ]


async def _measure(send: Send, body: bytes, *, in_flight: int, seconds: float) -> tuple[float, float]:
    """(requests per second, CPU microseconds per request) of this process."""
    for _ in range(50):
        await send(body)
    done = 0
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()
    started = time.perf_counter()

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if await send(body) != 200:
                raise RuntimeError("upstream answered with an error")
            done += 1

    await asyncio.gather(*(loop() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    return done / wall, (time.process_time() - cpu) / done * 1e6


async def _httpx_native(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200))

    async def send(body: bytes) -> int:
        response = await client.post(url, content=body, headers={"content-type": "application/json"})
        return response.status_code

    return send, client.aclose


async def _httpx_aiohttp(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found]  # noqa: PLC0415

    client = httpx.AsyncClient(transport=AiohttpTransport())

    async def send(body: bytes) -> int:
        response = await client.post(url, content=body, headers={"content-type": "application/json"})
        return response.status_code

    return send, client.aclose


async def _aiohttp(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiohttp  # type: ignore[import-not-found]  # noqa: PLC0415

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))

    async def send(body: bytes) -> int:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
            await response.read()
            return int(response.status)

    return send, session.close


async def _service_client(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """The service's own OpenRouterClient: httpx requests handed straight to the aiohttp transport, and the
    answer decoded as a turn decodes it."""
    from service.config import Settings  # noqa: PLC0415
    from service.upstream.client import OpenRouterClient  # noqa: PLC0415

    base = url.removesuffix("/responses")
    client = OpenRouterClient(Settings(openrouter_api_key="bench", openrouter_base_url=base))

    async def send(body: bytes) -> int:
        await client.create(body)
        return 200

    return send, client.aclose


CANDIDATES = {
    "httpx (native pool)": _httpx_native,
    "httpx + httpx-aiohttp": _httpx_aiohttp,
    "service OpenRouterClient": _service_client,
    "aiohttp": _aiohttp,
}


async def run(seconds: float, in_flight: int, items: int) -> None:
    upstream = await asyncio.to_thread(start_fake_upstream, Path("/tmp"))
    url = f"http://{HOST}:{upstream.port}{UPSTREAM_PATH}"
    body = direct_body("bench/fast", _history(items))
    print(f"{in_flight} in flight, {len(body):,}-byte body ({items} history items), {seconds:.0f} s each")
    try:
        for name, make in CANDIDATES.items():
            try:
                send, close = await make(url)
            except ImportError as exc:
                print(f"{name:24s} skipped ({exc.name} not installed)")
                continue
            try:
                rate, cpu = await _measure(send, body, in_flight=in_flight, seconds=seconds)
            finally:
                await close()
            print(f"{name:24s} {rate:8.0f} req/s  {cpu:7.0f} µs CPU/request (client process, incl. event loop)")
    finally:
        await asyncio.to_thread(upstream.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--items", type=int, default=100)
    args = parser.parse_args()
    uvloop.run(run(args.seconds, args.in_flight, args.items))


if __name__ == "__main__":
    main()
