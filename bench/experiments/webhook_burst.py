"""How fast webhook events reach one healthy endpoint: 2,000 due events (one background turn's, copied in the
outbox) for a receiver on loopback that answers 200 at once, delivered by `--processes` serve processes on a
database of their own (wiped). The sends to one endpoint and for one tenant are bounded per process
(service/webhooks/delivery.py); this measures what that bound and the claim loop leave of a burst's throughput
(`--root` runs another checkout; alternate runs to compare two)."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

ADMIN = "admin-key-0123456789abcdef"
EVENTS = 2000


class Receiver:
    def __init__(self) -> None:
        self.received = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.received += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


async def _recreated(database_url: str) -> None:
    server, name = database_url.rsplit("/", 1)
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def run(database_url: str, processes: int, root: Path, port: int) -> float:
    await _recreated(database_url)
    env = {**os.environ, "DATABASE_URL": database_url, "ADMIN_API_KEY": ADMIN, "LOG_FORMAT": "json"}
    env |= {"WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}
    env.pop("OPENROUTER_API_KEY", None)
    python = str(root / ".venv" / "bin" / "python")
    receiver = Receiver()
    server = await asyncio.start_server(receiver.answer, "127.0.0.1", port)
    subprocess.run([python, "-m", "service", "migrate"], cwd=root, env=env, capture_output=True, check=True)
    created = subprocess.run(
        [python, "-m", "service", "keys", "create", "--tenant", "burst"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    serves = [
        subprocess.Popen(
            [python, "-m", "service", "serve"],
            cwd=root,
            env={**env, "PORT": str(port + 1 + n)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(processes)
    ]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port + 1}", timeout=30) as client:
            for _ in range(300):
                try:
                    await client.get("/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            hook = {"url": f"http://127.0.0.1:{port}/hook", "events": ["response.completed"]}
            made = await client.post(
                "/admin/tenants/burst/webhooks", headers={"Authorization": f"Bearer {ADMIN}"}, json=hook
            )
            assert made.status_code == 200, made.text
            turn = {"model": "demo/echo", "input": "hi", "background": True}
            started = await client.post("/v1/responses", headers={"Authorization": f"Bearer {key}"}, json=turn)
            assert started.status_code == 200, started.text
        while receiver.received < 1:
            await asyncio.sleep(0.05)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO webhook_delivery (event_id, endpoint_id, tenant_id, event_type, response_id,"
                " next_attempt_at) SELECT 'evt_burst_' || n, endpoint_id, tenant_id, event_type, response_id, now()"
                f" FROM webhook_delivery, generate_series(1, {EVENTS}) AS n"
            )
        finally:
            await conn.close()
        began = time.monotonic()
        while receiver.received < EVENTS + 1 and time.monotonic() - began < 120:
            await asyncio.sleep(0.02)
        took = time.monotonic() - began
        assert receiver.received == EVENTS + 1, f"{receiver.received - 1} of {EVENTS} delivered in {took:.1f} s"
        return took
    finally:
        for serve in serves:
            serve.terminate()
        for serve in serves:
            serve.wait()
        server.close()
        for writer in receiver.writers:
            writer.close()
        await asyncio.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/convstore_webhook_burst")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--port", type=int, default=18950)
    args = parser.parse_args()
    took = asyncio.run(run(args.database_url, args.processes, args.root.resolve(), args.port))
    print(f"{args.processes} process(es): {EVENTS} events to one endpoint in {took:.1f} s: {EVENTS / took:.0f}/s")


if __name__ == "__main__":
    sys.exit(main())
