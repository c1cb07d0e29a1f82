"""Bounded load test with faults, then an invariant check over the database.

    python -m bench.load_invariants                     # embedded PostgreSQL in a temp dir (default)
    python -m bench.load_invariants --database-url postgresql://postgres@127.0.0.1:5432/convstore_load
    make load LOAD_ARGS="--writers 20 --conversations 10 --turns-per-writer 10"

Everything runs on loopback and stops by itself: the service as `--processes` OS processes (`python -m service
serve`) sharing one database, a fake OpenRouter that injects random faults (5xx, 429 with Retry-After, stalls
past the first-byte timeout, connections cut before the answer, final 400s), and `--writers` clients posting
turns to `--conversations` shared conversations, each turn with its own Idempotency-Key. A writer retries a turn
refused with 409 (conversation_locked / idempotency_key_in_use) with the same key, re-sends some finished turns to
check the replay, and gives up after a bounded number of tries; the whole run is capped by --max-seconds.

Afterwards, per conversation: positions are 0..n-1 and match the counters; each completed turn's items (inputs,
then outputs) appear exactly once, together and in order; no failed turn appended anything; every turn a client
saw succeed is there; no turn text appears twice; nothing is left in_progress or claimed. Exit status 1 if any
invariant is violated. A database you name is not wiped: the check covers the conversations this run created.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bench.stack import on_database
from service.keys import service as keys
from service.migrate import PROJECT_ROOT
from tests.fake_openrouter import FakeOpenRouter, Reply, free_port, text_response

MODEL = "openai/gpt-4o-mini"
FIRST_BYTE_TIMEOUT = 1.0

# Fault mix of the fake upstream, per request (the rest are answered normally).
FAULTS = {
    "http_500": 0.05,
    "http_502": 0.04,
    "http_503": 0.04,
    "http_429": 0.05,
    "cut": 0.05,
    "stall": 0.02,
    "http_400": 0.02,
}


class FaultyUpstream(FakeOpenRouter):
    """The tests' fake OpenRouter answering each turn (non-streamed JSON) with a random fault from FAULTS, or after
    a short random delay with a text echoing the turn's input. It serves no model catalog: no window is known, so
    the service checks none."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.random = random.Random(seed)
        self.calls: Counter[str] = Counter()
        self.catalog = []
        self.responder = self._answer

    def _pick(self) -> str:
        roll = self.random.random()
        for fault, share in FAULTS.items():
            if roll < share:
                return fault
            roll -= share
        return "ok"

    def _answer(self, body: dict[str, Any]) -> Reply:
        fault = self._pick()
        self.calls[fault] += 1
        if fault == "stall":
            return Reply(kind="stall", delay=FIRST_BYTE_TIMEOUT * 2)
        if fault.startswith("http_"):
            status = int(fault[5:])
            headers = {"retry-after": "0"} if status == 429 else {}
            return Reply(
                status=status, body={"error": {"code": status, "message": f"injected {status}"}}, headers=headers
            )
        delay = self.random.uniform(0.005, 0.08)
        if fault == "cut":
            return Reply(delay=delay, cut_after=0)
        said = body.get("input", [])[-1]["content"][0]["text"]
        return Reply(delay=delay, body=text_response(f"re: {said}", model=MODEL))


class ServiceProcess:
    def __init__(
        self, database_url: str, upstream_url: str, log_dir: Path, index: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"service-{index}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "AUTO_MIGRATE": "false",
            "OPENROUTER_API_KEY": "load-test",
            "OPENROUTER_BASE_URL": upstream_url,
            "UPSTREAM_FIRST_BYTE_TIMEOUT": str(FIRST_BYTE_TIMEOUT),
            "UPSTREAM_TOTAL_TIMEOUT": "10",
            "UPSTREAM_RETRY_BASE_DELAY": "0.05",
            "UPSTREAM_RETRY_MAX_WAIT": "1",
            # The default, as every other process on the database has: the heartbeat reaper estimates a claim's start
            # from its expiry less its own TURN_LOCK_TTL (docs/scaling.md: processes share it).
            "TURN_LOCK_TTL": "960",
            "DB_POOL_SIZE": "5",
            "LOG_LEVEL": "WARNING",
            # Its writers are one tenant checking invariants, not a flood to refuse.
            "TENANT_REQUESTS_PER_SECOND": "0",
            "TENANT_TURNS_IN_FLIGHT": "0",
            # Short, so a killed process is noticed within the run; long enough that a loaded machine does not make
            # a live process miss it.
            "PROCESS_HEARTBEAT_TIMEOUT": "5",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"], cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early; see {self.log_path}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready within 60 s; see {self.log_path}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)  # response id -> (conversation, text)
    replays_checked: int = 0
    replay_mismatches: list[str] = field(default_factory=list)
    gave_up: int = 0


async def _writer(
    number: int,
    clients: list[httpx.AsyncClient],
    conversations: list[str],
    turns: int,
    deadline: float,
    tally: Tally,
    rng: random.Random,
) -> None:
    for turn in range(turns):
        if time.monotonic() > deadline:
            return
        conversation = rng.choice(conversations)
        said = f"w{number}-t{turn}-{uuid.uuid4().hex[:8]}"
        key = f"load-{said}"
        body = {"model": MODEL, "input": said, "conversation": conversation}
        for _attempt in range(200):
            if time.monotonic() > deadline:
                return
            client = rng.choice(clients)  # retries may land on another process
            try:
                answer = await client.post("/v1/responses", json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError as exc:
                tally.statuses[f"client_{type(exc).__name__}"] += 1
                continue
            code = answer.json().get("error", {}).get("code") if answer.status_code >= 400 else None
            # A 200 whose response failed (its process was taken for stopped and its claim given up) is an
            # answer, but not an acknowledged turn: it is stored failed and must not be appended.
            status = answer.json().get("status") if answer.status_code == 200 else None
            code = code or (status if status not in (None, "completed") else None)
            tally.statuses[f"{answer.status_code}{'/' + code if code else ''}"] += 1
            if answer.status_code == 409:
                await asyncio.sleep(rng.uniform(0.01, 0.1))
                continue
            if answer.status_code == 200 and status == "completed":
                response_id = answer.json()["id"]
                tally.acknowledged[response_id] = (conversation, said)
                if rng.random() < 0.2:
                    try:
                        again = await rng.choice(clients).post(
                            "/v1/responses", json=body, headers={"Idempotency-Key": key}
                        )
                    except httpx.HTTPError:  # that process was killed (--kill-after)
                        break
                    tally.replays_checked += 1
                    if again.status_code != 200 or again.content != answer.content:
                        tally.replay_mismatches.append(key)
            break  # a final answer (success or a stored failure): this turn is done
        else:
            tally.gave_up += 1


async def _until_released(engine: AsyncEngine, conversations: list[str], *, timeout: float) -> None:
    """Wait (bounded) for the survivors to fail a killed process's turns; the check then reports what is left."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT (SELECT count(*) FROM conversation WHERE id = ANY(:c) AND turn_response_id IS NOT NULL)"
        " + (SELECT count(*) FROM response WHERE conversation_id = ANY(:c) AND status IN ('queued', 'in_progress'))"
    )
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            if not await conn.scalar(query, {"c": conversations}):
                return
        await asyncio.sleep(0.2)


async def _check(engine: AsyncEngine, conversations: list[str], tally: Tally) -> list[str]:
    problems: list[str] = []
    async with engine.connect() as conn:
        for conversation in conversations:
            counters = (
                await conn.execute(
                    text("SELECT item_count, next_position, turn_response_id FROM conversation WHERE id = :c"),
                    {"c": conversation},
                )
            ).one()
            items = (
                await conn.execute(
                    text(
                        "SELECT position, response_id, is_output, ordinal, text_content FROM item "
                        "WHERE conversation_id = :c ORDER BY position"
                    ),
                    {"c": conversation},
                )
            ).all()
            responses = {
                row.id: row.status
                for row in await conn.execute(
                    text("SELECT id, status FROM response WHERE conversation_id = :c"), {"c": conversation}
                )
            }
            where = f"{conversation}:"
            positions = [i.position for i in items]
            if positions != list(range(len(items))):
                problems.append(f"{where} positions are not 0..{len(items) - 1}")
            if counters.item_count != len(items) or counters.next_position != len(items):
                problems.append(f"{where} counters {counters.item_count}/{counters.next_position} != {len(items)}")
            if counters.turn_response_id is not None:
                problems.append(f"{where} still claimed by {counters.turn_response_id}")
            groups: list[str] = []
            shape: dict[str, list[tuple[bool, int]]] = {}
            for item in items:
                if not groups or groups[-1] != item.response_id:
                    if item.response_id in shape:
                        problems.append(f"{where} turn {item.response_id} is split or appended twice")
                    groups.append(item.response_id)
                    shape[item.response_id] = []
                shape[item.response_id].append((item.is_output, item.ordinal))
            for response_id, keys_ in shape.items():
                if keys_ != sorted(keys_) or keys_[0] != (False, 0) or not keys_[-1][0]:
                    problems.append(f"{where} turn {response_id} items out of order or incomplete: {keys_}")
            completed = {rid for rid, status in responses.items() if status == "completed"}
            appended = set(shape)
            if completed != appended:
                problems.append(
                    f"{where} completed but not appended {sorted(completed - appended)}, "
                    f"appended but not completed {sorted(appended - completed)}"
                )
            running = [rid for rid, status in responses.items() if status in {"queued", "in_progress"}]
            if running:
                problems.append(f"{where} responses left running: {running}")
            said = Counter(i.text_content for i in items if not i.is_output)
            twice = [t for t, n in said.items() if n > 1]
            if twice:
                problems.append(f"{where} turn texts appended more than once: {twice}")
    for response_id, (conversation, said) in tally.acknowledged.items():
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT r.status, r.conversation_id, i.text_content FROM response r "
                        "JOIN item i ON i.response_id = r.id AND NOT i.is_output AND i.ordinal = 0 WHERE r.id = :r"
                    ),
                    {"r": response_id},
                )
            ).first()
        if row is None or row.status != "completed" or row.conversation_id != conversation or row.text_content != said:
            problems.append(f"acknowledged turn {response_id} ({said}) is not stored as completed in {conversation}")
    problems.extend(f"replay differed for key {key}" for key in tally.replay_mismatches)
    return problems


async def _prepare(engine: AsyncEngine, tenant: str) -> str:
    created = await keys.create_key(engine, tenant=tenant, name="load test")
    return created.secret


async def _run(args: argparse.Namespace, database_url: str) -> int:
    engine = create_async_engine(database_url, poolclass=NullPool)
    upstream = FaultyUpstream(args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="convstore-load-logs-"))
    bouncer = None
    processes = [ServiceProcess(database_url, upstream.base_url, log_dir, n) for n in range(args.processes)]
    if args.pgbouncer:
        from tests.pgbouncer_support import PgBouncer, require_pgbouncer  # noqa: PLC0415

        bouncer = PgBouncer(database_url, binary=require_pgbouncer()).start()
        pooled = {"DATABASE_DIRECT_URL": database_url, "DATABASE_TRANSACTION_POOLER": "true"}
        processes[0] = ServiceProcess(bouncer.url, upstream.base_url, log_dir, 0, pooled)
    rng = random.Random(args.seed)
    try:
        secret = await _prepare(engine, f"load-{uuid.uuid4().hex[:8]}")
        upstream.start()
        for process in processes:
            await asyncio.to_thread(process.start)
        headers = {"Authorization": f"Bearer {secret}"}
        limits = httpx.Limits(max_connections=args.writers * 2)
        clients = [httpx.AsyncClient(base_url=p.url, headers=headers, timeout=30, limits=limits) for p in processes]
        conversations = []
        for _ in range(args.conversations):
            answer = await clients[0].post("/v1/conversations", json={})
            answer.raise_for_status()
            conversations.append(answer.json()["id"])
        tally = Tally()
        started = time.monotonic()
        deadline = started + args.max_seconds
        writers = asyncio.gather(
            *(
                _writer(n, clients, conversations, args.turns_per_writer, deadline, tally, random.Random(rng.random()))
                for n in range(args.writers)
            )
        )
        if args.kill_after is not None:
            # The last process dies mid-run (SIGKILL): its turns must be failed and its conversations freed by the
            # others within its heartbeat timeout, and every invariant must still hold.
            await asyncio.sleep(args.kill_after)
            processes[-1].kill()
            print(f"  killed process {len(processes) - 1} after {args.kill_after:g} s")
        await writers
        if args.kill_after is not None:
            await _until_released(engine, conversations, timeout=15)
        elapsed = time.monotonic() - started
        for client in clients:
            await client.aclose()
        problems = await _check(engine, conversations, tally)
    finally:
        for process in processes:
            await asyncio.to_thread(process.stop)
        upstream.stop()
        if bouncer is not None:
            bouncer.stop()
        await engine.dispose()

    planned = args.writers * args.turns_per_writer
    print(
        f"load: {args.processes} service process(es), {args.writers} writers x {args.conversations} conversations, "
        f"{planned} planned turns, {elapsed:.1f} s"
    )
    print(f"  client answers: {dict(sorted(tally.statuses.items()))}")
    print(
        f"  acknowledged turns: {len(tally.acknowledged)}, replays checked: {tally.replays_checked}, "
        f"gave up: {tally.gave_up}"
    )
    print(f"  upstream calls: {sum(upstream.calls.values())} {dict(sorted(upstream.calls.items()))}")
    if elapsed >= args.max_seconds:
        print(f"  stopped at the {args.max_seconds:.0f} s cap before every planned turn ran")
    if problems:
        print(f"INVARIANTS VIOLATED ({len(problems)}):")
        for problem in problems[:50]:
            print(f"  - {problem}")
        print(f"service logs kept in {log_dir}")
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    print(
        f"invariants hold over {args.conversations} conversations: positions contiguous, every completed turn "
        "appended exactly once and in order, no failed turn appended, every acknowledged turn stored, "
        "no duplicate turn, nothing left running or claimed"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_invariants", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL to use (not wiped; migrated to head). Default: an embedded one in a temporary directory "
        "(DATABASE_URL is the service's: a load test writing there would fill it with its tenants)",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--turns-per-writer", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--pgbouncer", action="store_true", help="process 0 through pgbouncer in transaction mode")
    parser.add_argument("--kill-after", type=float, default=None, help="SIGKILL the last process after N seconds")
    args = parser.parse_args(argv)
    print(f"seed {args.seed}")
    return on_database(args.database_url, "convstore-load-", lambda url: asyncio.run(_run(args, url)))


if __name__ == "__main__":
    sys.exit(main())
