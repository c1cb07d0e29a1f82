"""Heartbeats: a process that stops beating has its turns failed and its conversations freed by any other
process within its PROCESS_HEARTBEAT_TIMEOUT, while a live process's slow turns are never taken for dead.

A dead process is a row whose heartbeat is old; the real thing (a SIGKILLed `serve`) is in
test_multiprocess.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.heartbeat import PROCESS_STOPPED_ERROR
from tests.conftest import LiveServer
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import a_dead_turns_running_child_note, claimed_by_a_lost_turn, eventually, execute
from tests.stream_support import conversation_state, wait_until_ended
from tests.turn_support import MODEL, new_conversation, rows

TIMEOUT = 1.0  # PROCESS_HEARTBEAT_TIMEOUT of the instance under test


async def _dead_process(db: AsyncEngine, *, responses: list[str], conversations: list[str]) -> None:
    """A process that beat for the last time a minute ago, listing these turns."""
    await execute(
        db,
        "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout, running_responses,"
        " running_conversations) VALUES ('proc_dead', 'elsewhere', 1, now() - interval '60 seconds', 1,"
        " :responses, :conversations)",
        responses=responses,
        conversations=conversations,
    )


async def _received(fake: FakeOpenRouter, count: int) -> bool:
    return len(fake.requests) >= count


async def _freed(db: AsyncEngine, conv: str) -> bool:
    return (await conversation_state(db, conv))["turn_response_id"] is None


async def test_a_dead_processs_listed_turn_is_failed_and_its_conversation_freed_within_the_timeout(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    live = start_server(process_heartbeat_timeout=TIMEOUT)
    tenant = await make_tenant("heidi", live=live)
    conv, response_id = await claimed_by_a_lost_turn(tenant, db, ttl=live.settings.turn_lock_ttl, age=0)
    locked = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": conv})
    assert locked.status_code == 409 and locked.json()["error"]["code"] == "conversation_locked"

    await _dead_process(db, responses=[response_id], conversations=[conv])
    started = time.monotonic()
    await eventually(lambda: _freed(db, conv), timeout=5)
    assert time.monotonic() - started < 3 * TIMEOUT
    [row] = await rows(db, "SELECT status, error, completed_at FROM response WHERE id = :r", r=response_id)
    assert row["status"] == "failed" and row["error"] == PROCESS_STOPPED_ERROR and row["completed_at"] is not None
    assert (await rows(db, "SELECT last_status FROM conversation WHERE id = :c", c=conv)) == [{"last_status": "failed"}]
    [process] = await rows(db, "SELECT stopped_at FROM service_process WHERE id = 'proc_dead'")
    assert process["stopped_at"] is not None
    after = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": conv})
    assert after.status_code == 200 and after.json()["status"] == "completed"


async def test_a_response_hidden_for_a_dead_processs_plain_chain_turn_goes_within_the_timeout(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    """The dead process's plain turn noted itself as the running child of the response it continued, so a delete
    of that response only hid it. The process is found dead: the note goes, and the response with it (not when
    the note's TURN_LOCK_TTL runs out)."""
    live = start_server(process_heartbeat_timeout=TIMEOUT)
    tenant = await make_tenant("ivan", live=live)
    root = (await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "forget me"})).json()["id"]
    await a_dead_turns_running_child_note(db, root, expires_in=3600)
    assert (await tenant.http.delete(f"/v1/responses/{root}")).status_code == 200
    assert await rows(db, "SELECT deleted_at IS NOT NULL AS hidden FROM response") == [{"hidden": True}]

    await _dead_process(db, responses=["resp_of_a_dead_process"], conversations=[])

    async def gone() -> bool:
        return await rows(db, "SELECT id FROM response") == []

    await eventually(gone, timeout=3 * TIMEOUT)
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []


async def test_a_turn_begun_after_the_dead_processs_last_heartbeat_is_found_without_a_list(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    live = start_server(process_heartbeat_timeout=TIMEOUT)
    tenant = await make_tenant("ivan", live=live)
    # Claimed 30 s ago, listed by no process: its process died before its next heartbeat.
    conv, response_id = await claimed_by_a_lost_turn(tenant, db, ttl=live.settings.turn_lock_ttl, age=30)
    # A claim taken just now and listed by no process yet is left alone until the horizon passes it.
    fresh_conv, _ = await claimed_by_a_lost_turn(tenant, db, ttl=live.settings.turn_lock_ttl, age=0)
    await _dead_process(db, responses=[], conversations=[])
    await eventually(lambda: _freed(db, conv), timeout=5)
    [row] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response_id)
    assert row == {"status": "failed", "error": PROCESS_STOPPED_ERROR}
    assert not await _freed(db, fresh_conv)
    # Once every live process (the suite's own server beats with the default 10 s timeout) has beaten for longer
    # than its timeout since, the fresh claim is no one's either.
    await eventually(lambda: _freed(db, fresh_conv), timeout=20)


async def test_slow_turns_of_a_live_process_are_never_taken_for_dead(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    live = start_server(process_heartbeat_timeout=TIMEOUT)
    tenant = await make_tenant("judy", live=live)
    await _dead_process(db, responses=[], conversations=[])  # keeps the reaper searching for orphans meanwhile
    conv = await new_conversation(tenant.http)
    streamed_conv = await new_conversation(tenant.http)
    slow = 3.5 * TIMEOUT
    fake_upstream.enqueue(Reply(body=text_response("slow but alive"), delay=slow))
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("also alive", chunks=7), delay=slow / 10))
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("a chain", chunks=7), delay=slow / 10))
    bodies = [
        {"model": MODEL, "input": "a", "conversation": conv},
        {"model": MODEL, "input": "b", "conversation": streamed_conv, "background": True},
        {"model": MODEL, "input": "c", "background": True},
    ]
    started_turns = []
    for number, body in enumerate(bodies, start=1):  # one at a time to the upstream: each takes its reply
        started_turns.append(asyncio.create_task(tenant.http.post("/v1/responses", json=body)))
        await eventually(lambda n=number: _received(fake_upstream, n), timeout=10)
    plain, streamed, chained = await asyncio.gather(*started_turns)
    assert plain.status_code == 200 and plain.json()["status"] == "completed", plain.text
    for started in (streamed, chained):
        assert (await wait_until_ended(tenant.http, started.json()["id"]))["status"] == "completed"
    for conversation in (conv, streamed_conv):
        state = await conversation_state(db, conversation)
        assert len(state["items"]) == 2 and state["turn_response_id"] is None
    assert await rows(db, "SELECT id FROM response WHERE status <> 'completed'") == []


async def test_turns_outliving_turn_lock_ttl_keep_their_claim_key_and_note_while_their_process_lives(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A turn may run past TURN_LOCK_TTL (one that compacts first makes two upstream calls, each up to
    UPSTREAM_TOTAL_TIMEOUT): its process's heartbeat renews its claim, its Idempotency-Key and its note as a
    running child, so no other turn takes the conversation, no retry runs it again, and a delete of the
    response it continues only hides it. (Without the renewal all three ran out at the TTL.)"""
    ttl = 1.5
    live = start_server(process_heartbeat_timeout=0.4, turn_lock_ttl=ttl)
    tenant = await make_tenant("long-turns", live=live)
    conversation = await new_conversation(tenant.http)
    fake_upstream.reply_json(text_response("root answer"))
    root = (await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "root"})).json()["id"]
    fake_upstream.enqueue(Reply(body=text_response("long conversation answer"), delay=ttl + 2.5))
    fake_upstream.enqueue(Reply(body=text_response("long chain answer"), delay=ttl + 2.5))
    keyed = {"model": MODEL, "input": "take long", "conversation": conversation}
    in_conversation = asyncio.create_task(
        tenant.http.post("/v1/responses", json=keyed, headers={"Idempotency-Key": "k-long"})
    )
    await eventually(lambda: _received(fake_upstream, 2), timeout=10)
    chained = asyncio.create_task(
        tenant.http.post("/v1/responses", json={"model": MODEL, "input": "go on", "previous_response_id": root})
    )
    await eventually(lambda: _received(fake_upstream, 3), timeout=10)
    await asyncio.sleep(ttl + 0.5)

    other = await tenant.http.post("/v1/responses", json={**keyed, "input": "meanwhile"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "conversation_locked", other.text
    retry = await tenant.http.post("/v1/responses", json=keyed, headers={"Idempotency-Key": "k-long"})
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "idempotency_key_in_use", retry.text
    [held] = await rows(
        db,
        "SELECT turn_expires_at > now() AS claimed, (SELECT held_until > now() FROM idempotency_key) AS key_held,"
        " (SELECT expires_at > now() FROM running_chain_turn) AS noted FROM conversation WHERE id = :c",
        c=conversation,
    )
    assert held == {"claimed": True, "key_held": True, "noted": True}
    assert (await tenant.http.delete(f"/v1/responses/{root}")).status_code == 200

    answered, continued = await asyncio.gather(in_conversation, chained)
    assert answered.status_code == 200 and answered.json()["status"] == "completed", answered.text
    assert continued.status_code == 200 and continued.json()["status"] == "completed", continued.text
    state = await conversation_state(db, conversation)
    assert len(state["items"]) == 2 and state["turn_response_id"] is None
    linked = await rows(db, "SELECT previous_response_id FROM response WHERE id = :r", r=continued.json()["id"])
    assert linked == [{"previous_response_id": root}]
    replay = await tenant.http.post("/v1/responses", json=keyed, headers={"Idempotency-Key": "k-long"})
    assert replay.status_code == 200 and replay.json()["id"] == answered.json()["id"]
    assert len(fake_upstream.requests) == 3


async def test_a_background_turn_older_than_every_ttl_is_not_failed_while_its_process_lists_it(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """The expiry sweep fails running responses with no claim once they are older than the longest TTL of a live
    process (their process died unnoticed). One that a live process lists at its heartbeats is running, however
    long: it is left to finish."""
    live = start_server(process_heartbeat_timeout=0.4, turn_lock_ttl=1.5)  # its sweep runs every second
    tenant = await make_tenant("long-background", live=live)
    fake_upstream.reply_json(text_response("root answer"))
    root = (await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "root"})).json()["id"]
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("slow and alive", chunks=8), delay=0.4))
    body = {"model": MODEL, "input": "go on", "previous_response_id": root, "background": True}
    started = await tenant.http.post("/v1/responses", json=body)
    assert started.status_code == 200, started.text
    response_id = started.json()["id"]

    async def listed() -> bool:
        found = await rows(db, "SELECT id FROM service_process WHERE :r = ANY(running_responses)", r=response_id)
        return bool(found)

    await eventually(listed)
    # Older than any TTL a process of this database declares.
    await execute(db, "UPDATE response SET created_at = now() - interval '1 day' WHERE id = :r", r=response_id)
    ended = await wait_until_ended(tenant.http, response_id)
    assert ended["status"] == "completed", ended


async def test_a_clean_stop_marks_the_process_stopped_and_lists_nothing_left_running(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    live = start_server(process_heartbeat_timeout=TIMEOUT)
    tenant = await make_tenant("kim", live=live)
    await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    beating = await rows(
        db, "SELECT id FROM service_process WHERE stopped_at IS NULL AND heartbeat_timeout = :t", t=TIMEOUT
    )
    assert len(beating) == 1
    await asyncio.to_thread(live.stop)
    [row] = await rows(
        db, "SELECT stopped_at, running_responses FROM service_process WHERE id = :p", p=beating[0]["id"]
    )
    assert row["stopped_at"] is not None and row["running_responses"] == []
