"""Idempotency-Key on streamed turns: the replay is the turn's whole event stream, read from the response (its
stored event log, or the run while it still goes on), not what the first client happened to receive; the key
keeps no copy of a stored turn's stream. A store=false stream, which has no event log, keeps the run's frames
once the run has ended."""

from __future__ import annotations

import asyncio
import gc
import zlib
from typing import Any

import httpx
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.migrate import alembic_config, downgrade, head_revision, upgrade
from service.responses.frame_log import inflated
from service.responses.runner import TurnRun
from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.reliability_support import execute
from tests.stream_support import parse_sse, read_events, wait_until_ended
from tests.test_event_log_storage import prose
from tests.test_thread_migration import _query, _run, scratch_url  # noqa: F401 - the fixture
from tests.turn_support import MODEL, new_conversation, rows

ANSWER = "one two three four five six seven eight"


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def _leave_after(client: httpx.AsyncClient, body: dict[str, Any], key: str, events: int) -> list[dict[str, Any]]:
    """Start a keyed stream, read `events` events, and disconnect."""
    async with client.stream("POST", "/v1/responses", json=body, headers=keyed(key)) as started:
        assert started.status_code == 200
        return await read_events(started, limit=events)


async def _until_completed(db: AsyncEngine, key: str) -> None:
    """A key is completed once the server has seen its client leave (its next write fails) or its run end; a
    retry before that is answered 409 idempotency_key_in_use."""
    for _ in range(200):
        if await rows(db, "SELECT state FROM idempotency_key WHERE key = :k", k=key) == [{"state": "completed"}]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the key {key} was never completed")


def _deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


_UNSTORED_STREAM = {"model": MODEL, "input": "Count", "stream": True, "store": False}


async def _keyed_unstored_stream(
    tenant: Tenant, fake: FakeOpenRouter, db: AsyncEngine, key: str
) -> tuple[httpx.Response, dict[str, Any]]:
    """A keyed store=false stream, once its key is completed: the answer, and the key's two forms of it."""
    fake.enqueue(Reply(kind="sse", events=text_stream_events(ANSWER, chunks=8)))
    first = await tenant.http.post("/v1/responses", json=_UNSTORED_STREAM, headers=keyed(key))
    assert first.status_code == 200
    await _until_completed(db, key)
    (stored,) = await rows(db, "SELECT body, body_zlib FROM idempotency_key WHERE key = :k", k=key)
    return first, stored


async def test_a_keyed_stream_whose_client_left_replays_the_whole_stream_live_then_from_the_log(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(ANSWER, chunks=8), delay=0.25))
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "input": "Count", "conversation": conversation, "stream": True}
    received = await _leave_after(alice.http, body, "k-left", events=4)
    response_id = received[0]["response"]["id"]
    assert _deltas(received) != ANSWER
    await _until_completed(db, "k-left")
    assert (await alice.http.get(f"/v1/responses/{response_id}")).json()["status"] == "in_progress"

    # The turn goes on (STREAM_DISCONNECT_POLICY=continue): the retry follows it to its end.
    live = await alice.http.post("/v1/responses", json=body, headers=keyed("k-left"))
    assert live.status_code == 200, live.text
    assert live.headers["idempotent-replayed"] == "true"
    assert live.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in parse_sse(live.text)]
    assert events[: len(received)] == received
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed" and _deltas(events) == ANSWER

    assert (await wait_until_ended(alice.http, response_id))["status"] == "completed"
    logged = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    later = await alice.http.post("/v1/responses", json=body, headers=keyed("k-left"))
    assert later.status_code == 200 and later.headers["idempotent-replayed"] == "true"
    assert later.content == logged.content
    assert [data for _, data in parse_sse(later.text)] == events
    assert len(fake_upstream.requests) == 1
    # The key holds no copy of the stream: it names the response whose event log is the answer.
    [key] = await rows(db, "SELECT state, status_code, body, response_id, answer_response_id FROM idempotency_key")
    assert key == {
        "state": "completed",
        "status_code": 200,
        "body": b"",
        "response_id": response_id,
        "answer_response_id": response_id,
    }


async def test_a_keyed_store_false_stream_whose_client_left_replays_the_whole_stream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(ANSWER, chunks=8), delay=0.2))
    body = {"model": MODEL, "input": "Count", "stream": True, "store": False}
    received = await _leave_after(alice.http, body, "k-nostore", events=3)
    await _until_completed(db, "k-nostore")  # once the run ends: a store=false stream has no event log
    replay = await alice.http.post("/v1/responses", json=body, headers=keyed("k-nostore"))
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    events = [data for _, data in parse_sse(replay.text)]
    assert events[: len(received)] == received
    assert events[-1]["type"] == "response.completed" and _deltas(events) == ANSWER
    assert len(fake_upstream.requests) == 1
    assert await rows(db, "SELECT id FROM response") == []


async def test_a_keyed_store_false_streams_answer_is_kept_packed_and_replayed_byte_exact(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Nothing else keeps such a stream, so its key does: as the run's frames packed (a stored event log's form),
    not the stream as sent, which is several times the answer's text; the replay is the stream's bytes."""
    answer = prose(6000)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(answer, chunks=3000)))
    body = {"model": MODEL, "input": "Tell me everything", "stream": True, "store": False}
    first = await alice.http.post("/v1/responses", json=body, headers=keyed("k-packed"))
    assert first.status_code == 200
    await _until_completed(db, "k-packed")
    (key,) = await rows(db, "SELECT body, body_zlib FROM idempotency_key WHERE key = 'k-packed'")
    assert key["body"] is None
    assert b"".join(inflated(key["body_zlib"], 1 << 20)) == first.content
    assert len(key["body_zlib"]) < len(first.content) / 5, (len(key["body_zlib"]), len(first.content))
    replay = await alice.http.post("/v1/responses", json=body, headers=keyed("k-packed"))
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["content-type"] == first.headers["content-type"]
    assert replay.content == first.content
    assert _deltas([data for _, data in parse_sse(replay.text)]) == answer
    # An answer stored as sent, before answers were packed, replays as it did.
    await execute(db, "UPDATE idempotency_key SET body = :b, body_zlib = NULL WHERE key = 'k-packed'", b=first.content)
    assert await rows(db, "SELECT body_zlib FROM idempotency_key WHERE key = 'k-packed'") == [{"body_zlib": None}]
    replay = await alice.http.post("/v1/responses", json=body, headers=keyed("k-packed"))
    assert replay.status_code == 200 and replay.content == first.content
    assert len(fake_upstream.requests) == 1


async def test_while_a_process_of_an_older_release_serves_a_keyed_store_false_stream_is_stored_as_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """During a rolling upgrade a retry may reach a process of the release before packed answers, which replays
    the key's `body` only: a packed answer came back from it as a 200 stream without a single event, and a store=false
    answer is kept nowhere else. Such a process's heartbeat row has no code_revision."""
    for _ in range(200):  # the suite empties the table between tests: the server's next heartbeat writes its row
        if ours := await rows(db, "SELECT code_revision FROM service_process WHERE stopped_at IS NULL"):
            break
        await asyncio.sleep(0.05)
    assert ours == [{"code_revision": head_revision()}]
    await execute(
        db,
        "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout) "
        "VALUES ('proc_older', 'h', 1, now(), 60)",
    )
    try:
        first, stored = await _keyed_unstored_stream(alice, fake_upstream, db, "k-rolling")
        assert stored == {"body": first.content, "body_zlib": None}
        replay = await alice.http.post("/v1/responses", json=_UNSTORED_STREAM, headers=keyed("k-rolling"))
        assert replay.headers["idempotent-replayed"] == "true" and replay.content == first.content
        # Once it has stopped (or the reaper took it for dead), answers are packed again.
        await execute(db, "UPDATE service_process SET stopped_at = now() WHERE id = 'proc_older'")
        _, after = await _keyed_unstored_stream(alice, fake_upstream, db, "k-after")
        assert after["body"] is None and after["body_zlib"] is not None
    finally:
        await execute(db, "DELETE FROM service_process WHERE id = 'proc_older'")


async def test_an_older_process_whose_heartbeat_is_late_but_which_lives_still_gets_answers_stored_as_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The cluster takes a process whose heartbeat is late for dead only once its liveness lock is free (its
    event loop stalled, its CPU starved, it still serves): until then an older one replays the answers stored
    meanwhile, and a packed one came back from it as a 200 stream without an event."""
    liveness_key = 0x5EED_0000_0001
    await execute(
        db,
        "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout, liveness_key) "
        "VALUES ('proc_older_slow', 'h', 1, now() - interval '120 s', 60, :k)",
        k=liveness_key,
    )
    async with db.connect() as holder:  # the older process's listening connection holds its liveness lock
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": liveness_key})
        try:
            first, stored = await _keyed_unstored_stream(alice, fake_upstream, db, "k-slow-older")
            assert stored == {"body": first.content, "body_zlib": None}
        finally:
            await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": liveness_key})
            await execute(db, "DELETE FROM service_process WHERE id = 'proc_older_slow'")


async def test_a_downgrade_unpacks_keyed_store_false_streams(scratch_url: str) -> None:  # noqa: F811
    await asyncio.to_thread(upgrade, scratch_url, "head")
    frames = [f'event: e\ndata: {{"n": {n}}}\n\n'.encode() for n in range(400)]
    packed = b"".join(zlib.compress(b"".join(frames[i : i + 16]), 1) for i in range(0, 400, 16))
    await _run(
        scratch_url,
        f"""
        INSERT INTO tenant (id, name) VALUES ('ten_t', 't');
        INSERT INTO idempotency_key (tenant_id, key, fingerprint, method, path, state, status_code, body, body_zlib,
                                     expires_at)
        VALUES ('ten_t', 'packed', '\\x00', 'POST', '/v1/responses', 'completed', 200, NULL,
                decode('{packed.hex()}', 'hex'), now() + interval '1 day'),
               ('ten_t', 'as-sent', '\\x00', 'POST', '/v1/responses', 'completed', 200, 'as sent', NULL,
                now() + interval '1 day')
        """,
    )
    await asyncio.to_thread(downgrade, scratch_url, "d5f1b7e3a920")
    keys = await _query(scratch_url, "SELECT key, body FROM idempotency_key ORDER BY key")
    assert keys == [{"key": "as-sent", "body": b"as sent"}, {"key": "packed", "body": b"".join(frames)}]
    await asyncio.to_thread(upgrade, scratch_url, "head")
    await asyncio.to_thread(command.check, alembic_config(scratch_url))


async def test_a_keyed_store_false_stream_lets_go_of_its_run_once_it_is_answered(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Its run (every frame of the stream) is freed as soon as the key's answer is stored, not at a full garbage
    collection: the run's task holds the request's context, whose key tracker held the run, a cycle that kept each
    such stream in the worker (the service raises the collector's thresholds, so full collections are rare).
    With the collector off, a run still held after its stream ended is one that only a collection would free."""
    body = {"model": MODEL, "input": "Count", "stream": True, "store": False}
    gc.collect()
    gc.disable()
    try:
        for n in range(3):
            fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(ANSWER, chunks=8)))
            async with alice.http.stream("POST", "/v1/responses", json=body, headers=keyed(f"k-free-{n}")) as r:
                assert r.status_code == 200
                await r.aread()
            await _until_completed(db, f"k-free-{n}")
        await asyncio.sleep(0.2)  # the run's own task ends after its last frame
        held = [o for o in gc.get_objects() if isinstance(o, TurnRun)]
    finally:
        gc.enable()
    assert held == []
