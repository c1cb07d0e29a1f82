"""Several service processes on one database: a stream started on A is followed live from B, a background turn
run by A is cancelled through B, and when A is SIGKILLed mid-turn, B fails A's turns and frees its conversations
within A's heartbeat timeout. A is `python -m service serve` in its own OS process, connected directly or through
pgbouncer in transaction mode; B runs in the test process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.heartbeat import PROCESS_STOPPED_ERROR
from service.keys import service as keys
from tests.conftest import LiveServer
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.pgbouncer_support import PgBouncer, require_pgbouncer
from tests.reliability_support import ServiceProcess, client_for, eventually
from tests.stream_support import conversation_state, wait_until_ended
from tests.test_observability import scrape, value
from tests.turn_support import MODEL, new_conversation, rows

HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture(params=["direct", "pgbouncer"])
def process_a(
    request: pytest.FixtureRequest, database_url: str, fake_upstream: FakeOpenRouter
) -> Iterator[ServiceProcess]:
    """A, connected directly, or through pgbouncer in transaction mode (LISTEN and migrations directly)."""
    env = {"PROCESS_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT), "LOG_LEVEL": "WARNING"}
    bouncer = None
    url = database_url
    if request.param == "pgbouncer":
        bouncer = PgBouncer(database_url, binary=require_pgbouncer()).start()
        url = bouncer.url
        env |= {"DATABASE_DIRECT_URL": database_url, "DATABASE_TRANSACTION_POOLER": "true"}
    process = ServiceProcess(url, fake_upstream.base_url, **env)
    try:
        process.start(timeout=60)
        if bouncer is not None:
            assert "login attempt" in bouncer.log(), "A's database connections must go through pgbouncer"
        yield process
    finally:
        process.stop()
        if bouncer is not None:
            bouncer.stop()


@pytest.fixture
def process_b(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(process_heartbeat_timeout=HEARTBEAT_TIMEOUT)


async def _clients(db: AsyncEngine, a: ServiceProcess, b: LiveServer) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    key = await keys.create_key(db, tenant="multi")
    return client_for(a.url, key.secret), client_for(b.url, key.secret)


async def _timed_events(response: httpx.Response, arrivals: list[tuple[float, dict[str, Any]]]) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            arrivals.append((time.monotonic(), json.loads(line[len("data: ") :])))


async def test_a_stream_started_on_a_is_followed_live_from_b(
    process_a: ServiceProcess, process_b: LiveServer, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    a, b = await _clients(db, process_a, process_b)
    deltas = 24
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("w " * deltas, chunks=deltas), delay=0.15))
    on_a: list[tuple[float, dict[str, Any]]] = []
    on_b: list[tuple[float, dict[str, Any]]] = []
    async with a, b:
        conv = await new_conversation(a)
        body = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True}
        async with a.stream("POST", "/v1/responses", json=body) as started:
            reading_a = asyncio.create_task(_timed_events(started, on_a))
            await eventually(lambda: _has(on_a, 5), timeout=20)
            response_id = on_a[0][1]["response"]["id"]
            params = {"stream": "true", "starting_after": "2"}
            async with b.stream("GET", f"/v1/responses/{response_id}", params=params) as resumed:
                assert resumed.status_code == 200
                await _timed_events(resumed, on_b)
            await reading_a
    events_a = [event for _, event in on_a]
    events_b = [event for _, event in on_b]
    assert events_b == events_a[3:], "B relays exactly A's events after sequence number 2"
    assert events_b[-1]["type"] == "response.completed"
    # Live: B saw the middle of the stream while A was still streaming it, not the log after the end.
    end_on_a = on_a[-1][0]
    middle = next(t for t, event in on_b if event["sequence_number"] == len(events_a) // 2)
    assert middle < end_on_a - 0.5, f"B got the middle {end_on_a - middle:.2f}s before A's end"


async def test_a_follower_on_b_gets_a_terminal_event_numbered_after_its_last_when_a_dies(
    process_a: ServiceProcess, process_b: LiveServer, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A's stream is followed from B; A is killed. The reaper fails the response; B's follower, and a resume
    after it, end with that terminal event, numbered after what the reader has (past the opening events, the live
    numbering went with A; the events are rebuilt from the stored state)."""
    a, b = await _clients(db, process_a, process_b)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("w " * 40, chunks=40), delay=0.25))
    on_b: list[tuple[float, dict[str, Any]]] = []
    async with a, b:
        conv = await new_conversation(a)
        body = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True, "background": True}
        async with a.stream("POST", "/v1/responses", json=body) as started:
            first = await _first_data(started.aiter_lines())  # then the client goes: the background turn runs on
        response_id = first["response"]["id"]
        params = {"stream": "true", "starting_after": "1"}
        async with b.stream("GET", f"/v1/responses/{response_id}", params=params) as resumed:
            reading = asyncio.create_task(_timed_events(resumed, on_b))
            await eventually(lambda: _has(on_b, 6), timeout=20)
            process_a.kill()
            await asyncio.wait_for(reading, timeout=30)
        events = [event for _, event in on_b]
        numbers = [event["sequence_number"] for event in events]
        assert numbers == list(range(2, 2 + len(events))), "contiguous, after the 2 the reader had"
        assert (events[-1]["type"], events[-1]["response"]["status"]) == ("response.failed", "failed")
        again = await b.get(
            f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": str(numbers[-2])}
        )
    frames = [json.loads(line[6:]) for line in again.text.splitlines() if line.startswith("data: ")]
    assert [(f["type"], f["sequence_number"]) for f in frames] == [("response.failed", numbers[-2] + 1)]


async def test_b_follows_a_stream_of_a_for_as_long_as_it_runs_whatever_bs_own_turn_lock_ttl(
    process_a: ServiceProcess, start_server: Callable[..., LiveServer], fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A follower used to give up after its own process's TURN_LOCK_TTL and rebuild the events of a response still
    running: a response.failed carrying status in_progress. A's turn is A's to time."""
    short = start_server(process_heartbeat_timeout=HEARTBEAT_TIMEOUT, turn_lock_ttl=2.0)
    a, b = await _clients(db, process_a, short)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("w " * 24, chunks=24), delay=0.2))
    async with a, b:
        conv = await new_conversation(a)
        body = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True, "background": True}
        async with a.stream("POST", "/v1/responses", json=body) as started:
            first = await _first_data(started.aiter_lines())
        followed = await b.get(f"/v1/responses/{first['response']['id']}", params={"stream": "true"})
    events = [json.loads(line[6:]) for line in followed.text.splitlines() if line.startswith("data: ")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed", events[-1]
    assert "".join(e.get("delta", "") for e in events if e["type"] == "response.output_text.delta") == "w " * 24


async def _first_data(lines: Any) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[len("data: ") :])
            return event
    raise AssertionError("the stream ended without an event")


async def _has(events: list[Any], count: int) -> bool:
    return len(events) >= count


async def test_a_background_turn_run_by_a_is_cancelled_through_b(
    process_a: ServiceProcess, process_b: LiveServer, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    a, b = await _clients(db, process_a, process_b)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("w " * 40, chunks=40), delay=0.3))
    async with a, b:
        conv = await new_conversation(a)
        started = await a.post(
            "/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conv, "background": True}
        )
        response_id = started.json()["id"]
        await asyncio.sleep(1.0)
        asked = time.monotonic()
        cancelled = await b.post(f"/v1/responses/{response_id}/cancel")
        took = time.monotonic() - asked
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert took < 3, f"the cancel took {took:.1f}s"
        final = await wait_until_ended(a, response_id)
    assert final["status"] == "cancelled"
    [row] = await rows(db, "SELECT status FROM response WHERE id = :r", r=response_id)
    assert row["status"] == "cancelled"
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["turn_response_id"] is None


async def test_a_killed_mid_turn_is_noticed_by_b_which_frees_the_conversation_and_fails_the_turn(
    process_a: ServiceProcess, process_b: LiveServer, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    a, b = await _clients(db, process_a, process_b)
    fake_upstream.enqueue(Reply(kind="stall", delay=60), Reply(kind="stall", delay=60))
    async with a, b:
        plain_conv = await new_conversation(a)
        background_conv = await new_conversation(a)
        plain = asyncio.create_task(
            a.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": plain_conv})
        )
        background = await a.post(
            "/v1/responses", json={"model": MODEL, "input": "hi", "conversation": background_conv, "background": True}
        )
        response_id = background.json()["id"]

        async def both_claimed() -> bool:
            states = [await conversation_state(db, c) for c in (plain_conv, background_conv)]
            return all(s["turn_response_id"] is not None for s in states) and len(fake_upstream.requests) >= 2

        await eventually(both_claimed, timeout=20)
        await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)  # A has listed both turns in a heartbeat by now
        failed_before = value(await scrape(process_b), "convstore_turns_total", outcome="failed")
        process_a.kill()
        killed = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            await plain

        async def freed() -> bool:
            states = [await conversation_state(db, c) for c in (plain_conv, background_conv)]
            return all(s["turn_response_id"] is None for s in states)

        await eventually(freed, timeout=30)
        took = time.monotonic() - killed
        assert took < HEARTBEAT_TIMEOUT * 1.25 + 2, f"freed {took:.1f}s after the kill"
        [row] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response_id)
        assert row == {"status": "failed", "error": PROCESS_STOPPED_ERROR}
        # Each failed turn is counted, as one that fails on its own is: the stored one in its conversation's
        # responses (the plain one stored nothing), both in B's count of failed turns.
        counts = await rows(
            db,
            "SELECT id, response_count, last_status FROM conversation WHERE id IN (:p, :b)",
            p=plain_conv,
            b=background_conv,
        )
        assert {c["id"]: (c["response_count"], c["last_status"]) for c in counts} == {
            plain_conv: (0, "failed"),
            background_conv: (1, "failed"),
        }
        assert value(await scrape(process_b), "convstore_turns_total", outcome="failed") == failed_before + 2
        after = await b.post("/v1/responses", json={"model": MODEL, "input": "again", "conversation": plain_conv})
        assert after.status_code == 200 and after.json()["status"] == "completed"
    for conv in (plain_conv, background_conv):
        items = (await conversation_state(db, conv))["items"]
        assert len(items) == (2 if conv == plain_conv else 0)


def test_chaos_over_two_processes_one_through_pgbouncer_one_killed_keeps_every_conversation_whole(
    database_url: str,
) -> None:
    """bench/load_invariants.py, small: 8 writers on 3 shared conversations through two processes (the first
    through pgbouncer in transaction mode), random upstream faults, the second process SIGKILLed mid-run; then
    every conversation is checked: no item lost, duplicated or reordered, nothing left running or claimed."""
    from bench.load_invariants import main as load_run

    require_pgbouncer()
    args = [
        "--database-url",
        database_url,
        "--processes",
        "2",
        "--writers",
        "8",
        "--conversations",
        "3",
        "--turns-per-writer",
        "15",
        "--max-seconds",
        "60",
        "--seed",
        "22",
        "--pgbouncer",
        "--kill-after",
        "1",
    ]
    assert load_run(args) == 0


async def test_a_pooler_in_transaction_mode_left_undeclared_is_answered_as_an_unavailable_database(
    database_url: str, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """DATABASE_URL at pgbouncer in transaction mode without DATABASE_TRANSACTION_POOLER: the pooler refuses the
    session settings each connection sends, and every request was a 500 with a traceback. It is a 503 the client
    may retry, as for any database the service cannot use, and /ready says the database is unreachable."""
    bouncer = PgBouncer(database_url, binary=require_pgbouncer()).start()
    process = ServiceProcess(bouncer.url, fake_upstream.base_url, DATABASE_DIRECT_URL=database_url)
    try:
        process.start_without_waiting()

        ready: list[httpx.Response] = []

        async def answered() -> bool:
            try:
                async with httpx.AsyncClient(base_url=process.url) as probe:
                    ready.append(await probe.get("/ready"))
            except httpx.TransportError:
                return False
            return True

        await eventually(answered, timeout=60)
        assert ready[-1].status_code == 503 and ready[-1].json()["database"] == "unreachable", ready[-1].text
        key = await keys.create_key(db, tenant="undeclared")
        async with client_for(process.url, key.secret) as client:
            answer = await client.post("/v1/conversations", json={})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable"
        assert "Traceback" not in process.log_path.read_text()
    finally:
        process.stop()
        bouncer.stop()
