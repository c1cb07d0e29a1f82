"""Which turns another process may take over, and what the old holder's late finish may still write. Real
processes: A is `python -m service serve` in its own OS process, frozen with SIGSTOP (alive, but its event loop
does not run) or with its database sessions cut; B runs in the test process.

- A claim's age is its stored start, so processes with different TURN_LOCK_TTL settings agree on it.
- A process whose heartbeats are late but which still holds its liveness lock is slow, not dead: its turns finish.
- A process taken for dead (late heartbeats, liveness lock gone) has its turns failed; when it comes back, its
  late finish neither overwrites that failure nor adds output items, nor appends to the conversation.
- An Idempotency-Key held by a process taken for dead is freed with its turns: a retry runs the turn at once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.heartbeat import PROCESS_STOPPED_ERROR
from service.keys import service as keys
from tests.conftest import LiveServer
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import ServiceProcess, assert_whole_turns, client_for, eventually, execute, scalar
from tests.stream_support import conversation_state, parse_sse, read_events, wait_until_ended
from tests.test_observability import scrape, value
from tests.turn_support import MODEL, new_conversation, rows

HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture
def process_a(database_url: str, fake_upstream: FakeOpenRouter) -> Callable[..., ServiceProcess]:
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        process = ServiceProcess(database_url, fake_upstream.base_url, LOG_LEVEL="WARNING", **env)
        started.append(process)
        return process.start(timeout=60)

    yield start  # type: ignore[misc]
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.process.send_signal(signal.SIGCONT)
        process.stop()


@contextmanager
def frozen(process: ServiceProcess) -> Iterator[None]:
    """SIGSTOP: the process is alive (its sockets open, the kernel answers for them) but runs nothing."""
    assert process.process is not None
    process.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.process.send_signal(signal.SIGCONT)


@contextlib.asynccontextmanager
async def frozen_outside_its_heartbeat(process: ServiceProcess, db: AsyncEngine) -> AsyncIterator[None]:
    """Frozen (SIGSTOP) at a moment its heartbeat holds no lock on its row: frozen between the heartbeat's upsert
    and its commit, it kept the row locked, and the reapers skip a locked row, so it was never taken for dead
    unless that transaction's session was cut too, which over a Unix socket (the embedded server) cannot be told
    from other processes' sessions. A freeze that finds the row locked is undone and tried again."""
    assert process.process is not None
    for _ in range(200):
        process.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.05)  # a statement it sent just before runs at the server all the same
        try:
            async with db.begin() as conn:
                await conn.exec_driver_sql("SET LOCAL lock_timeout = '100ms'")
                await conn.execute(
                    text("SELECT 1 FROM service_process WHERE pid = :p FOR UPDATE"), {"p": process.process.pid}
                )
            break
        except DBAPIError:
            process.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the process's row stayed locked")
    try:
        yield
    finally:
        process.process.send_signal(signal.SIGCONT)


async def _a_stopped_process(db: AsyncEngine) -> None:
    """A process that stopped a moment ago: the reapers then also look for claims no live process lists."""
    await execute(
        db,
        "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout, stopped_at)"
        " VALUES ('proc_gone', 'elsewhere', 1, now(), 1, now())",
    )


ADMIN_KEY = "admin-test-secret"


async def _turns_counted(a: ServiceProcess, b: LiveServer) -> dict[str, float]:
    """convstore_turns_total by outcome, A's and B's together."""
    async with httpx.AsyncClient(base_url=a.url) as client:
        on_a = (await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})).text
    on_b = await scrape(b)
    return {
        outcome: sum(value(exposition, "convstore_turns_total", outcome=outcome) for exposition in (on_a, on_b))
        for outcome in ("completed", "failed")
    }


async def _cut_sessions(db: AsyncEngine, process: ServiceProcess) -> None:
    """End every database session of the process, as the server does for a lost host once TCP keepalives fail on
    each: the liveness lock goes with its session, and so does a transaction the process was frozen in. Cutting the
    lock's session alone left a heartbeat frozen between its upsert and its commit holding the process's row, which
    the reapers skip while it is locked: the process was then never taken for dead. Sessions are found by their
    TCP ports; over a Unix socket (the embedded server) only the lock's session is known, and cut."""
    assert process.process is not None
    key = await scalar(db, "SELECT liveness_key FROM service_process WHERE pid = :p", p=process.process.pid)
    assert key is not None
    holder = await scalar(
        db,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND ((classid::bigint << 32) | objid::bigint) = :k",
        k=key,
    )
    assert holder is not None, "the process holds its liveness lock"
    server_port = await scalar(db, "SELECT inet_server_port()")
    connections = psutil.Process(process.process.pid).net_connections(kind="tcp")
    ports = [c.laddr.port for c in connections if c.raddr and c.raddr.port == server_port]
    cut = await rows(
        db,
        "SELECT pid, pg_terminate_backend(pid) AS ended FROM pg_stat_activity"
        " WHERE pid = :holder OR client_port = ANY(:ports)",
        holder=holder,
        ports=ports,
    )
    assert holder in {row["pid"] for row in cut} and all(row["ended"] for row in cut)


async def test_processes_with_different_turn_lock_ttls_agree_on_a_claims_age(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A claims with TURN_LOCK_TTL=30 and lists its turns only every 15 s; B (and the suite's server) reap with
    960. While a process stopped recently they look for unlisted claims older than their horizon: measured from
    the claim's expiry less their own TTL, A's fresh claim looked 930 s old and was freed under it."""
    a = process_a(TURN_LOCK_TTL="30", UPSTREAM_TOTAL_TIMEOUT="25", PROCESS_HEARTBEAT_TIMEOUT="60")
    b = start_server(process_heartbeat_timeout=0.5)
    assert b.settings.turn_lock_ttl == 960
    key = await keys.create_key(db, tenant="ttl")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Kept."), delay=3.0))
    async with client_for(a.url, key.secret) as on_a:
        conv = await new_conversation(on_a)
        await _a_stopped_process(db)
        answer = await on_a.post("/v1/responses", json={"model": MODEL, "input": "slow", "conversation": conv})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed", answer.json()
    [completed] = await assert_whole_turns(db, conv)
    assert completed["id"] == answer.json()["id"]
    [claim] = await rows(db, "SELECT turn_response_id, turn_claimed_at FROM conversation WHERE id = :c", c=conv)
    assert claim == {"turn_response_id": None, "turn_claimed_at": None}


async def test_a_frozen_process_is_slow_not_dead_and_its_turn_finishes(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A's heartbeats stop for three of its timeouts, but its liveness lock is held: B leaves its turn alone."""
    a = process_a(PROCESS_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
    start_server(process_heartbeat_timeout=0.5)
    key = await keys.create_key(db, tenant="frozen")
    # The answer comes while A is frozen, and waits in its socket.
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Late but whole."), delay=3.0))
    async with client_for(a.url, key.secret) as on_a:
        conv = await new_conversation(on_a)
        running = asyncio.create_task(
            on_a.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conv})
        )
        await eventually(lambda: _upstream_called(fake_upstream, 1), timeout=20)
        await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)  # A lists the turn in a heartbeat
        with frozen(a):
            await asyncio.sleep(3 * HEARTBEAT_TIMEOUT)
            late = await scalar(
                db,
                "SELECT now() - heartbeat_at > make_interval(secs => heartbeat_timeout) FROM service_process"
                " WHERE pid = :p",
                p=a.process.pid if a.process else 0,
            )
            assert late, "A's heartbeat is older than its timeout"
            state = await conversation_state(db, conv)
            assert state["turn_response_id"] is not None, "the claim of a live process was freed"
            assert await scalar(db, "SELECT stopped_at IS NULL FROM service_process WHERE pid = :p", p=a.process.pid)
        answer = await running
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    [completed] = await assert_whole_turns(db, conv)
    assert completed["id"] == answer.json()["id"]


async def test_a_late_finish_of_a_process_taken_for_dead_keeps_the_failure_and_writes_nothing(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A is frozen and its database sessions cut: B takes it for dead and fails its two background turns (one in a
    conversation, one starting a chain). Thawed, A's runs finish with full answers, which must not land."""
    a = process_a(PROCESS_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT), ADMIN_API_KEY=ADMIN_KEY)
    b = start_server(process_heartbeat_timeout=0.5)
    key = await keys.create_key(db, tenant="fenced")
    counted_before = await _turns_counted(a, b)
    for words in ("in a conversation", "in a chain"):
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(words, chunks=3), delay=1.5))
    async with client_for(a.url, key.secret) as on_a:
        conv = await new_conversation(on_a)
        in_conv = await on_a.post(
            "/v1/responses", json={"model": MODEL, "input": "one", "conversation": conv, "background": True}
        )
        alone = await on_a.post("/v1/responses", json={"model": MODEL, "input": "two", "background": True})
        ids = [in_conv.json()["id"], alone.json()["id"]]
        await eventually(lambda: _upstream_called(fake_upstream, 2), timeout=20)
        await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)
        async with frozen_outside_its_heartbeat(a, db):
            await _cut_sessions(db, a)
            taken = time.monotonic()

            async def failed() -> bool:
                statuses = await rows(db, "SELECT status FROM response WHERE id = ANY(:ids)", ids=ids)
                return [s["status"] for s in statuses] == ["failed", "failed"]

            await eventually(failed, timeout=15)
            assert time.monotonic() - taken < HEARTBEAT_TIMEOUT * 1.25 + 2
        assert a.process is not None

        async def a_ran_both_to_their_end() -> bool:
            """A beats again (it is back) and lists no turn: both runs got their whole answer and finished."""
            [row] = await rows(
                db, "SELECT stopped_at, running_responses FROM service_process WHERE pid = :p", p=a.process.pid
            )
            return row["stopped_at"] is None and row["running_responses"] == [] and len(fake_upstream.requests) == 2

        await eventually(a_ran_both_to_their_end, timeout=30)
        for response_id in ids:
            assert (await wait_until_ended(on_a, response_id))["status"] == "failed"
    stored = await rows(db, "SELECT id, status, error FROM response WHERE id = ANY(:ids) ORDER BY id", ids=ids)
    assert stored == sorted(
        [{"id": r, "status": "failed", "error": PROCESS_STOPPED_ERROR} for r in ids], key=lambda row: row["id"]
    )
    assert await scalar(db, "SELECT count(*) FROM item WHERE is_output AND response_id = ANY(:ids)", ids=ids) == 0
    assert await scalar(db, "SELECT count(*) FROM response_event_log WHERE response_id = ANY(:ids)", ids=ids) == 0
    [chain] = await rows(db, "SELECT response_count, last_status FROM response_chain WHERE id = :r", r=ids[1])
    # Counted once, by the takeover that failed it (as a turn failing on its own counts), not again by the late finish.
    assert (chain["response_count"], chain["last_status"]) == (1, "failed")
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["turn_response_id"] is None
    assert await scalar(db, "SELECT response_count FROM conversation WHERE id = :c", c=conv) == 1
    # Each turn is counted once, as failed, by B that failed it; A's late finish counts neither.
    counted = await _turns_counted(a, b)
    assert {outcome: counted[outcome] - counted_before[outcome] for outcome in counted} == {
        "completed": 0,
        "failed": 2,
    }


async def test_a_key_held_by_a_killed_process_is_free_for_a_retry_within_the_heartbeat_bound(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A holds a key for a turn whose answer never comes and is SIGKILLed. The same request on B got 409
    idempotency_key_in_use until the key's held_until (A's TURN_LOCK_TTL, 960 s); now B's reaper frees the key
    with A's claim, and the retry runs the turn, once, and its answer is what the key replays."""
    a = process_a(PROCESS_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
    b = start_server(process_heartbeat_timeout=0.5)
    key = await keys.create_key(db, tenant="keyed")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Never delivered."), delay=60.0))
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Answered on the retry.")))
    keyed = {"Idempotency-Key": "turn-7"}
    async with client_for(a.url, key.secret) as on_a, client_for(b.url, key.secret) as on_b:
        conv = await new_conversation(on_a)
        request = {"model": MODEL, "input": "hi", "conversation": conv}
        first = asyncio.create_task(on_a.post("/v1/responses", json=request, headers=keyed))
        await eventually(lambda: _upstream_called(fake_upstream, 1), timeout=20)
        assert a.process is not None
        a_id = await scalar(db, "SELECT id FROM service_process WHERE pid = :p", p=a.process.pid)
        [held] = await rows(db, "SELECT state, holder_process FROM idempotency_key WHERE key = 'turn-7'")
        assert held == {"state": "in_progress", "holder_process": a_id}
        await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)  # A lists the turn: its claim is freed in the key's pass
        a.kill()
        killed = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            await first
        while True:
            answer = await on_b.post("/v1/responses", json=request, headers=keyed)
            took = time.monotonic() - killed
            if answer.status_code != 409:
                break
            assert answer.json()["error"]["code"] == "idempotency_key_in_use", answer.text
            assert took < HEARTBEAT_TIMEOUT * 1.25 + 2, f"the key was still held {took:.1f}s after the kill"
            await asyncio.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "completed"
        assert answer.json()["output"][0]["content"][0]["text"] == "Answered on the retry."
        replay = await on_b.post("/v1/responses", json=request, headers=keyed)
    assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["id"] == answer.json()["id"]
    assert len(fake_upstream.requests) == 2
    [completed] = await assert_whole_turns(db, conv)
    assert completed["id"] == answer.json()["id"]
    [stored] = await rows(db, "SELECT state, response_id, holder_process FROM idempotency_key WHERE key = 'turn-7'")
    assert stored["state"] == "completed" and stored["response_id"] == answer.json()["id"]
    assert stored["holder_process"] not in (None, a_id)


async def test_a_keyed_stream_whose_process_was_killed_replays_its_failed_response(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A stored stream's key is answered from the stream's start: it names the response, whose id the client
    already holds. When its process dies the reaper stores that response failed, and a retry with the key replays
    it as such (created, in_progress, failed), as GET of the response would show it, without running it again."""
    a = process_a(PROCESS_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
    b = start_server(process_heartbeat_timeout=0.5)
    key = await keys.create_key(db, tenant="keyed-stream")
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("w " * 40, chunks=40), delay=0.5))
    keyed = {"Idempotency-Key": "stream-7"}
    async with client_for(a.url, key.secret) as on_a:
        conv = await new_conversation(on_a)
        request = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True}
        with contextlib.suppress(httpx.HTTPError):
            async with on_a.stream("POST", "/v1/responses", json=request, headers=keyed) as first:
                first_id = (await read_events(first, limit=4))[0]["response"]["id"]
                await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)  # A lists the turn
                [held] = await rows(db, "SELECT state, answer_response_id FROM idempotency_key WHERE key = 'stream-7'")
                assert held == {"state": "completed", "answer_response_id": first_id}
                a.kill()

    async def failed() -> bool:
        return await scalar(db, "SELECT status FROM response WHERE id = :r", r=first_id) == "failed"

    await eventually(failed, timeout=HEARTBEAT_TIMEOUT * 1.25 + 2)
    async with client_for(b.url, key.secret) as on_b:
        replay = await on_b.post("/v1/responses", json=request, headers=keyed)
    assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"
    events = [event for _, event in parse_sse(replay.text)]
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["id"] == first_id
    assert events[-1]["response"]["error"] == PROCESS_STOPPED_ERROR
    assert len(fake_upstream.requests) == 1
    assert (await conversation_state(db, conv))["items"] == []


async def _upstream_called(fake: FakeOpenRouter, times: int) -> bool:
    return len(fake.requests) >= times


async def test_a_chain_turn_begun_after_its_process_last_heartbeat_leaves_its_chain_when_the_process_is_killed(
    process_a: Callable[..., ServiceProcess],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A plain turn continuing a chain, killed with its process before that process's next heartbeat listed it:
    the reaper found no list naming it, so the turn stayed on its chain's running turns and as a running child of
    the response it continued. Each later turn of the chain renewed the listing's expiry, so the chain showed
    in_progress for as long as it was used. The unlisted turn is taken off once it is older than every live
    process's horizon, as an unlisted conversation claim is freed."""
    # A beats every 15 s: the turn it begins just after its first beat is in no list when it is killed.
    a = process_a(PROCESS_HEARTBEAT_TIMEOUT="60")
    b = start_server(process_heartbeat_timeout=0.5)
    key = await keys.create_key(db, tenant="unlisted")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("The chain starts.")))
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Never delivered."), delay=60.0))
    async with client_for(a.url, key.secret) as on_a, client_for(b.url, key.secret) as on_b:
        first = await on_a.post("/v1/responses", json={"model": MODEL, "input": "start"})
        assert first.status_code == 200, first.text
        chain = first.json()["id"]
        cut = asyncio.create_task(
            on_a.post("/v1/responses", json={"model": MODEL, "input": "go on", "previous_response_id": chain})
        )
        await eventually(lambda: _upstream_called(fake_upstream, 2), timeout=20)
        assert a.process is not None
        [listed] = await rows(db, "SELECT running_responses FROM service_process WHERE pid = :p", p=a.process.pid)
        assert listed["running_responses"] == [], "the turn must begin after A's last heartbeat"
        [running] = await rows(db, "SELECT turn_response_ids FROM response_chain WHERE id = :c", c=chain)
        assert len(running["turn_response_ids"]) == 1
        a.kill()
        with pytest.raises(httpx.HTTPError):
            await cut
        # As if A's heartbeat timeout had passed since its last beat: B takes it for dead (its lock is free).
        await execute(
            db,
            "UPDATE service_process SET heartbeat_at = now() - interval '61 seconds' WHERE pid = :p",
            p=a.process.pid,
        )

        async def taken_off() -> bool:
            [row] = await rows(db, "SELECT turn_response_ids FROM response_chain WHERE id = :c", c=chain)
            notes = await scalar(db, "SELECT count(*) FROM running_chain_turn WHERE previous_response_id = :c", c=chain)
            return row["turn_response_ids"] == [] and notes == 0

        # The horizon is every live process's last heartbeat less its timeout (10 s for this run's shared server).
        await eventually(taken_off, timeout=30)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        thread = await on_b.get(f"/admin/threads/{chain}", headers=admin)
        assert thread.status_code == 200, thread.text
        assert thread.json()["last_status"] == "failed"
        # The chain goes on, and is idle once its next turn has ended.
        after = await on_b.post("/v1/responses", json={"model": MODEL, "input": "again", "previous_response_id": chain})
        assert after.status_code == 200 and after.json()["status"] == "completed"
        assert (await on_b.get(f"/admin/threads/{chain}", headers=admin)).json()["last_status"] == "completed"
