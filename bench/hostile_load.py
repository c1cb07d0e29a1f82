"""A bounded hostile-load run on loopback (`make hostile`): two tenants on one service process. The hostile one
floods background turns on a slow upstream, opens streamed turns it never reads, sends bad inputs and random
keys, and holds connections that never finish their headers; the ordinary one does plain conversation turns
throughout. Prints the ordinary tenant's latency idle and under attack against the bar (p99 within 2x of idle,
no errors), then what happened to each kind of attack. The attack runs in a process of its own, so that only
the service is shared with the measured tenant. The never-read streams run apart, after the attack: their
events cost CPU whether read or not. Stops by itself (~85 s).

    python -m bench.hostile_load                         # embedded PostgreSQL in a temp dir
    python -m bench.hostile_load --database-url postgresql://postgres@127.0.0.1:5432/bench   # not wiped
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bench.http_client import Client
from bench.measure import MemorySampler, percentile
from bench.stack import HOST, LIMITS_OFF, Service, on_database, start_fake_upstream, start_service
from service.keys import service as keys

ORDINARY_MODEL = "bench/latency-20"  # a small, quick answer
FLOOD_MODEL = "bench/paced-64x100"  # 6.4 s of streaming per turn: each one holds an upstream connection
FLOOD_TURN_SECONDS = 6.5
READER_MODEL = "bench/paced-40000x0.5"  # 20 s of events (~6 MB) for a client that reads none of them
P99_BAR = 2.0
HISTORY_MEMORY_BAR = 3.0  # a turn's memory, as a multiple of its history's size
SERVICE_ENV = {
    # The limits at their defaults, except what makes the attack bite within a short run: a pool of 40 upstream
    # connections (the flooding tenant may hold half) and short stream-write and header timeouts.
    "TENANT_REQUESTS_PER_SECOND": "100",
    "TENANT_TURNS_IN_FLIGHT": "100",
    "UPSTREAM_TENANT_SHARE": "0.5",
    "UPSTREAM_MAX_CONNECTIONS": "40",
    "STREAM_WRITE_TIMEOUT": "3",
    "HTTP_HEADER_TIMEOUT": "3",
    "SHUTDOWN_GRACE_PERIOD": "2",
}


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)

    def add(self, what: str) -> None:
        self.statuses[what] += 1

    def __str__(self) -> str:
        return ", ".join(f"{what} {count}" for what, count in sorted(self.statuses.items())) or "none"


def _body(model: str, **fields: object) -> bytes:
    return msgspec.json.encode({"model": model, "input": "Tell me something.", **fields})


async def _ordinary_turns(port: int, secret: str, seconds: float, latencies: list[float], errors: Tally) -> None:
    client = Client(HOST, port, {"authorization": f"Bearer {secret}"})
    created = await client.request("POST", "/v1/conversations", b"{}")
    conversation = msgspec.json.decode(created.body)["id"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            reply = await client.request("POST", "/v1/responses", _body(ORDINARY_MODEL, conversation=conversation))
        except Exception as exc:
            errors.add(type(exc).__name__)
            continue
        if reply.status == 200:
            latencies.append(reply.seconds)
        else:
            errors.add(f"HTTP {reply.status}")
    client.close()


async def _flood(port: int, secret: str, deadline: float, tally: Tally) -> None:
    """One flooding loop: background turns on a slow upstream, as fast as they are accepted; a short pause
    after a refusal (a flood that ignores Retry-After entirely measures the CPU, not the limits)."""
    client = Client(HOST, port, {"authorization": f"Bearer {secret}"})
    while time.monotonic() < deadline:
        try:
            reply = await client.request("POST", "/v1/responses", _body(FLOOD_MODEL, background=True))
        except Exception as exc:
            tally.add(type(exc).__name__)
            continue
        tally.add(f"HTTP {reply.status}")
        if reply.status != 200:
            await asyncio.sleep(0.1)
    client.close()


def _open_slow_reader(port: int, secret: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    body = _body(READER_MODEL, stream=True)
    sock.sendall(
        f"POST /v1/responses HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {secret}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _closed_early(sock: socket.socket) -> bool:
    """Whether the server closed this never-read stream before its end: drain what is there, then EOF."""
    sock.settimeout(2.0)
    received = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except OSError:
        return False
    finally:
        sock.close()
    return b"response.completed" not in received


def _hold_idle_connection(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # headers never finished
    return sock


def _was_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(1024) == b""
    except OSError:
        return False
    finally:
        sock.close()


async def _bad_inputs(port: int, secret: str, deadline: float, tally: Tally) -> None:
    client = Client(HOST, port, {"authorization": f"Bearer {secret}"})
    deep = b'{"model": "m", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    while time.monotonic() < deadline:
        stranger = Client(HOST, port, {"authorization": _random_key()})
        probes = [
            ("POST", "/v1/responses", deep, client),
            ("GET", "/v1/responses/resp_%00?stream=true", b"", client),
            ("GET", "/v1/conversations/conv_x", b"", stranger),
        ]
        for method, path, body, target in probes:
            try:
                reply = await target.request(method, path, body)
            except Exception as exc:
                tally.add(type(exc).__name__)
                continue
            tally.add(f"HTTP {reply.status}")
        stranger.close()
        await asyncio.sleep(0.02)
    client.close()


def _random_key() -> str:
    return "Bearer sk-cs-" + secrets.token_urlsafe(32)


@dataclass
class HistoryMemory:
    history_mib: float = 0.0
    before_mib: float = 0.0
    peak_mib: float = 0.0
    turn_status: int = 0
    beyond_cap_status: int = 0
    beyond_cap_code: str = ""

    @property
    def multiple(self) -> float:
        return (self.peak_mib - self.before_mib) / self.history_mib


async def _big_history(service: Service, secret: str, history_mib: int) -> HistoryMemory:
    """One tiny turn on a conversation holding `history_mib` MiB of items: the process' memory peak during it,
    over the history's size; then an append past MAX_CONVERSATION_BYTES, which must be refused."""
    client = Client(HOST, service.port, {"authorization": f"Bearer {secret}"})
    conversation = msgspec.json.decode((await client.request("POST", "/v1/conversations", b"{}")).body)["id"]
    words = "lorem ipsum dolor sit amet " * (2**20 // 27)  # ~1 MiB of text (few distinct words: see docs)
    item = msgspec.json.encode({"items": [{"type": "message", "role": "user", "content": words}]})
    for _ in range(history_mib):
        await client.request("POST", f"/v1/conversations/{conversation}/items", item, timeout=120)
    result = HistoryMemory(history_mib=history_mib * len(item) / 2**20)
    body = msgspec.json.encode({"model": "bench/fast", "input": "And?", "conversation": conversation})
    with MemorySampler(service.worker_processes, 0.005) as memory:
        await asyncio.sleep(0.2)
        result.before_mib = max(sum(values) for _, values in memory.samples)
        reply = await client.request("POST", "/v1/responses", body, timeout=120)
        await asyncio.sleep(0.2)
        result.peak_mib = memory.peak_total()
    result.turn_status = reply.status
    for _ in range(64):  # on toward the cap, until refused
        reply = await client.request("POST", f"/v1/conversations/{conversation}/items", item, timeout=120)
        if reply.status != 200:
            break
    result.beyond_cap_status = reply.status
    result.beyond_cap_code = str(msgspec.json.decode(reply.body).get("error", {}).get("code", ""))
    client.close()
    return result


async def _health_latency(port: int, deadline: float) -> float:
    client = Client(HOST, port)
    worst = 0.0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        await client.request("GET", "/health")
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.2)
    client.close()
    return worst


async def _run(args: argparse.Namespace, database_url: str) -> int:
    engine = create_async_engine(database_url, poolclass=NullPool)
    suffix = secrets.token_hex(3)
    hostile = (await keys.create_key(engine, tenant=f"hostile-{suffix}")).secret
    ordinary = (await keys.create_key(engine, tenant=f"ordinary-{suffix}")).secret
    await engine.dispose()
    log_dir = Path(tempfile.mkdtemp(prefix="convstore-hostile-"))
    upstream = start_fake_upstream(log_dir)
    service: Service | None = None
    status = 1
    try:
        env = {**SERVICE_ENV, **(LIMITS_OFF if args.without_limits else {})}
        service = start_service(log_dir, database_url=database_url, upstream_port=upstream.port, extra_env=env)
        if args.history_only:
            status = await _history_only(args, service, ordinary)
        else:
            status = await _attack(args, service, hostile, ordinary)
        return status
    finally:
        if service is not None:
            service.stop()
        upstream.stop()
        if status == 0 and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"service and fake upstream logs kept in {log_dir}")


def _print_history(big: HistoryMemory) -> bool:
    """Prints the big-history turn's figures; whether they meet the bars."""
    history_verdict = "met" if big.turn_status == 200 and big.multiple <= HISTORY_MEMORY_BAR else "MISSED"
    print(
        f"  one turn on a {big.history_mib:.0f} MiB history: HTTP {big.turn_status}, process memory "
        f"{big.before_mib:.0f} -> peak {big.peak_mib:.0f} MiB = {big.multiple:.2f}x the history "
        f"(bar <= {HISTORY_MEMORY_BAR:.0f}x: {history_verdict})"
    )
    capped = big.beyond_cap_status == 400 and big.beyond_cap_code == "conversation_too_large"
    print(f"  appending past MAX_CONVERSATION_BYTES: HTTP {big.beyond_cap_status} {big.beyond_cap_code}")
    return history_verdict == "met" and capped


async def _history_only(args: argparse.Namespace, service: Service, ordinary: str) -> int:
    ok = _print_history(await _big_history(service, ordinary, args.history_mib))
    print("all bars met" if ok else "SOME BARS MISSED")
    return 0 if ok else 1


def _attacker(port: int, secret: str, seconds: float, flooders: int, results: Any) -> None:
    """The hostile tenant's flood, bad inputs and /health probes, in a process of their own: in the measuring
    client's event loop, handling their replies delayed the ordinary tenant's, which is not the service's doing."""
    results.put("ready")
    results.put(asyncio.run(_attack_loops(port, secret, seconds, flooders)))


async def _attack_loops(
    port: int, secret: str, seconds: float, flooders: int
) -> tuple[dict[str, int], dict[str, int], float]:
    deadline = time.monotonic() + seconds
    flood, bad = Tally(), Tally()
    tasks = [asyncio.create_task(_flood(port, secret, deadline, flood)) for _ in range(flooders)]
    tasks.append(asyncio.create_task(_bad_inputs(port, secret, deadline, bad)))
    health = asyncio.create_task(_health_latency(port, deadline))
    await asyncio.gather(*tasks)
    return dict(flood.statuses), dict(bad.statuses), await health


async def _attack(args: argparse.Namespace, service: Service, hostile: str, ordinary: str) -> int:
    port = service.port
    idle: list[float] = []
    idle_errors = Tally()
    await _ordinary_turns(port, ordinary, args.idle_seconds, idle, idle_errors)

    attacked: list[float] = []
    attacked_errors = Tally()
    with MemorySampler(service.worker_processes, 0.25) as memory:
        before = memory.sample()
        idlers = [await asyncio.to_thread(_hold_idle_connection, port) for _ in range(args.idle_connections)]
        context = multiprocessing.get_context("spawn")
        results = context.SimpleQueue()
        attacker = context.Process(
            target=_attacker, args=(port, hostile, args.attack_seconds, args.flooders, results), daemon=True
        )
        attacker.start()
        assert await asyncio.to_thread(results.get) == "ready"
        await _ordinary_turns(port, ordinary, args.attack_seconds, attacked, attacked_errors)
        flood_counts, bad_counts, worst_health = await asyncio.to_thread(results.get)
        await asyncio.to_thread(attacker.join, 30)
        flood, bad = Tally(Counter(flood_counts)), Tally(Counter(bad_counts))
        peak = memory.peak_total()
    idlers_closed = sum(await asyncio.gather(*(asyncio.to_thread(_was_closed, s) for s in idlers)))
    # Then, apart (their streams' events cost CPU whether read or not, which is not what the bar is about):
    # streams whose clients never read, each ~6 MB, far more than the sockets hold. The flood's last turns end
    # first, so that the hostile tenant is under its cap again.
    await asyncio.sleep(FLOOD_TURN_SECONDS)
    with MemorySampler(service.worker_processes, 0.25) as reader_memory:
        readers_before = reader_memory.sample()
        readers = [await asyncio.to_thread(_open_slow_reader, port, hostile) for _ in range(args.slow_readers)]
        await asyncio.sleep(args.reader_seconds)
        readers_peak = reader_memory.peak_total()
    readers_closed = sum(await asyncio.gather(*(asyncio.to_thread(_closed_early, s) for s in readers)))
    big = await _big_history(service, ordinary, args.history_mib)

    idle_p99, attacked_p99 = percentile(idle, 99), percentile(attacked, 99)
    ratio = attacked_p99 / idle_p99
    errors = sum(attacked_errors.statuses.values()) + sum(idle_errors.statuses.values())
    server_errors = sum(n for what, n in (flood.statuses + bad.statuses).items() if what.startswith("HTTP 5"))
    ok = ratio <= P99_BAR and errors == 0 and server_errors == 0 and readers_closed == len(readers)
    ms = 1000
    limits = "tenant limits OFF (control)" if args.without_limits else "tenant limits on"
    print(f"hostile load: {args.attack_seconds:.0f} s of attack on one service process (loopback), {limits}")
    print(
        f"  ordinary tenant idle:         p50 {percentile(idle, 50) * ms:.1f} ms, p99 {idle_p99 * ms:.1f} ms "
        f"({len(idle)} turns, errors: {idle_errors})"
    )
    print(
        f"  ordinary tenant under attack: p50 {percentile(attacked, 50) * ms:.1f} ms, p99 {attacked_p99 * ms:.1f} "
        f"ms ({len(attacked)} turns, errors: {attacked_errors})"
    )
    verdict = "met" if ratio <= P99_BAR else "MISSED"
    print(f"  p99 under attack / idle:      {ratio:.2f}x (bar <= {P99_BAR:.0f}x: {verdict}); errors {errors} (bar 0)")
    print(f"  flooding tenant, background turns ({args.flooders} loops): {flood}")
    print(f"  bad inputs and random keys:   {bad}; 5xx {server_errors} (bar 0)")
    print(
        f"  slow readers (apart, {args.reader_seconds:.0f} s): disconnected before their stream's end: "
        f"{readers_closed} of {len(readers)}; memory {sum(readers_before):.0f} MiB before, peak {readers_peak:.0f} MiB"
    )
    print(f"  connections that never finished headers, closed: {idlers_closed} of {len(idlers)}")
    print(f"  /health worst latency under attack: {worst_health * ms:.1f} ms")
    print(f"  service memory under attack: {sum(before):.0f} MiB before, peak {peak:.0f} MiB")
    ok = _print_history(big) and ok
    print("all bars met" if ok else "SOME BARS MISSED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_load", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL") or None,
        help="PostgreSQL to use (not wiped; migrated to head). Default: BENCH_DATABASE_URL, else embedded",
    )
    parser.add_argument(
        "--without-limits", action="store_true", help="the control: the same attack with the tenant limits off"
    )
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="as long as the attack: p99s of as many turns")
    parser.add_argument("--attack-seconds", type=float, default=20.0)
    parser.add_argument("--flooders", type=int, default=16)
    parser.add_argument("--slow-readers", type=int, default=3)
    parser.add_argument("--reader-seconds", type=float, default=10.0)
    parser.add_argument("--history-mib", type=int, default=24, help="the big history's size (cap: 32 MiB)")
    parser.add_argument("--idle-connections", type=int, default=300)
    parser.add_argument("--history-only", action="store_true", help="only the big-history turn and the size cap")
    parser.add_argument("--keep-logs", action="store_true", help="keep the service's log even when every bar is met")
    args = parser.parse_args(argv)
    return on_database(args.database_url, "convstore-hostile-db-", lambda url: asyncio.run(_run(args, url)))


if __name__ == "__main__":
    sys.exit(main())
