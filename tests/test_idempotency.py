"""Idempotency-Key on POST /v1/responses, /v1/conversations and /v1/conversations/{id}/items: replay, concurrent
duplicate, different body, tenant scope, which answers are kept, key length, purge, and cascade on delete."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import eventually, scalar
from tests.turn_support import MODEL, new_conversation, rows


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_same_key_and_body_replays_the_turn_without_calling_upstream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("Paris.", msg_id="msg_paris"))
    body = {"model": MODEL, "input": "Capital of France?", "conversation": conversation}

    first = await alice.http.post("/v1/responses", json=body, headers=keyed("turn-1"))
    again = await alice.http.post("/v1/responses", json=body, headers=keyed("turn-1"))

    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT count(*) FROM response") == 1
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 2
    [key] = await rows(
        db, "SELECT state, status_code, response_id, expires_at - created_at AS kept FROM idempotency_key"
    )
    assert key["state"] == "completed"
    assert key["status_code"] == 200
    assert key["response_id"] == first.json()["id"]
    assert key["kept"].total_seconds() >= 24 * 3600


async def test_replay_is_byte_identical_even_if_client_reorders_json_keys(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    first = await alice.http.post(
        "/v1/responses",
        content=b'{"model": "openai/gpt-4o", "input": "Hi"}',
        headers={**keyed("k-order"), "Content-Type": "application/json"},
    )
    again = await alice.http.post(
        "/v1/responses",
        content=b'{"input":"Hi","model":"openai/gpt-4o"}',
        headers={**keyed("k-order"), "Content-Type": "application/json"},
    )
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert len(fake_upstream.requests) == 1


async def test_same_key_while_first_request_runs_gets_409_then_the_replay(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow answer."), delay=1.5))
    body = {"model": MODEL, "input": "Take your time"}

    first = asyncio.create_task(alice.http.post("/v1/responses", json=body, headers=keyed("slow-1")))

    async def upstream_called() -> bool:
        return len(fake_upstream.requests) == 1

    await eventually(upstream_called)
    duplicate = await alice.http.post("/v1/responses", json=body, headers=keyed("slow-1"))
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "idempotency_key_in_use"
    assert duplicate.headers["retry-after"] == "1"

    original = await first
    assert original.status_code == 200, original.text
    replay = await alice.http.post("/v1/responses", json=body, headers=keyed("slow-1"))
    assert replay.status_code == 200
    assert replay.json()["id"] == original.json()["id"]
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT count(*) FROM response") == 1


async def test_same_key_with_different_body_gets_422_and_stores_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    first = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "One"}, headers=keyed("k-1"))
    other = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Two"}, headers=keyed("k-1"))
    assert first.status_code == 200
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_mismatch"
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT count(*) FROM response") == 1


async def test_same_key_on_another_route_gets_422(alice: Tenant, db: AsyncEngine) -> None:
    created = await alice.http.post("/v1/conversations", json={}, headers=keyed("k-route"))
    assert created.status_code == 200
    conversation = created.json()["id"]
    items = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "hi"}]},
        headers=keyed("k-route"),
    )
    assert items.status_code == 422
    assert await scalar(db, "SELECT count(*) FROM item") == 0


async def test_keys_are_scoped_to_the_tenant(alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(text_response("For Alice."))
    fake_upstream.reply_json(text_response("For Bob."))
    body = {"model": MODEL, "input": "Hello"}
    for_alice = await alice.http.post("/v1/responses", json=body, headers=keyed("shared-key"))
    for_bob = await bob.http.post("/v1/responses", json=body, headers=keyed("shared-key"))
    assert for_alice.status_code == for_bob.status_code == 200
    assert for_alice.json()["id"] != for_bob.json()["id"]
    assert for_bob.json()["output"][0]["content"][0]["text"] == "For Bob."
    assert "idempotent-replayed" not in for_bob.headers
    assert len(fake_upstream.requests) == 2


async def test_overlong_or_empty_key_gets_400(alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine) -> None:
    body = {"model": MODEL, "input": "Hello"}
    too_long = await alice.http.post("/v1/responses", json=body, headers=keyed("k" * 256))
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "invalid_idempotency_key"
    empty = await alice.http.post("/v1/responses", json=body, headers=keyed(""))
    assert empty.status_code == 400
    assert fake_upstream.requests == []
    longest = await alice.http.post("/v1/responses", json=body, headers=keyed("k" * 255))
    assert longest.status_code == 200
    assert await scalar(db, "SELECT count(*) FROM idempotency_key") == 1


async def test_rejected_request_is_not_saved_so_the_key_can_be_retried(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    invalid = await alice.http.post("/v1/responses", json={"model": MODEL, "input": 42}, headers=keyed("k-fix"))
    assert invalid.status_code == 400
    assert await scalar(db, "SELECT count(*) FROM idempotency_key") == 0
    missing = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Hi", "conversation": "conv_nope"}, headers=keyed("k-fix")
    )
    assert missing.status_code == 404
    fixed = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"}, headers=keyed("k-fix"))
    assert fixed.status_code == 200, fixed.text
    assert len(fake_upstream.requests) == 1


async def test_conversation_locked_is_not_saved(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("First."), delay=1.0))
    running = asyncio.create_task(
        alice.http.post("/v1/responses", json={"model": MODEL, "input": "A", "conversation": conversation})
    )

    async def upstream_called() -> bool:
        return len(fake_upstream.requests) == 1

    await eventually(upstream_called)
    body = {"model": MODEL, "input": "B", "conversation": conversation}
    locked = await alice.http.post("/v1/responses", json=body, headers=keyed("k-locked"))
    assert locked.status_code == 409
    assert locked.json()["error"]["code"] == "conversation_locked"
    assert (await running).status_code == 200
    retried = await alice.http.post("/v1/responses", json=body, headers=keyed("k-locked"))
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers


async def test_upstream_failure_after_the_turn_started_is_replayed_not_rerun(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json({"error": {"code": 400, "message": "Prompt too long"}}, status=400)
    body = {"model": MODEL, "input": "Very long"}
    first = await alice.http.post("/v1/responses", json=body, headers=keyed("k-fail"))
    again = await alice.http.post("/v1/responses", json=body, headers=keyed("k-fail"))
    assert first.status_code == 400
    assert again.status_code == 400
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT status FROM response") == "failed"


async def test_conversation_create_and_item_append_replay(alice: Tenant, db: AsyncEngine) -> None:
    body = {"metadata": {"topic": "x"}, "items": [{"type": "message", "role": "user", "content": "hi"}]}
    created = await alice.http.post("/v1/conversations", json=body, headers=keyed("conv-1"))
    again = await alice.http.post("/v1/conversations", json=body, headers=keyed("conv-1"))
    assert created.status_code == again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    assert await scalar(db, "SELECT count(*) FROM conversation") == 1
    conversation = created.json()["id"]

    items = {"items": [{"type": "message", "role": "user", "content": "more"}]}
    path = f"/v1/conversations/{conversation}/items"
    added = await alice.http.post(path, json=items, headers=keyed("items-1"))
    added_again = await alice.http.post(path, json=items, headers=keyed("items-1"))
    assert added.status_code == added_again.status_code == 200
    assert added_again.json() == added.json()
    positions = await rows(db, "SELECT position FROM item WHERE conversation_id = :c ORDER BY position", c=conversation)
    assert [p["position"] for p in positions] == [0, 1]
    links = await rows(db, "SELECT key, conversation_id FROM idempotency_key ORDER BY key")
    assert links == [
        {"key": "conv-1", "conversation_id": conversation},
        {"key": "items-1", "conversation_id": conversation},
    ]


async def test_deleting_what_a_key_created_deletes_its_stored_answer(alice: Tenant, db: AsyncEngine) -> None:
    turn = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Secret"}, headers=keyed("k-del"))
    conversation = (await alice.http.post("/v1/conversations", json={}, headers=keyed("k-conv"))).json()["id"]
    store_false = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Ephemeral", "store": False}, headers=keyed("k-nostore")
    )
    assert store_false.status_code == 200
    assert await scalar(db, "SELECT count(*) FROM idempotency_key") == 3

    assert (await alice.http.delete(f"/v1/responses/{turn.json()['id']}")).status_code == 200
    assert (await alice.http.delete(f"/v1/conversations/{conversation}")).status_code == 200
    left = await rows(
        db, "SELECT key, response_id, conversation_id, status_code, body FROM idempotency_key ORDER BY key"
    )
    # The deleted response's and conversation's keys keep only the 404 (so that a retry does not run the turn,
    # or create the conversation, again), none of their content; store=false leaves no response row to link to:
    # its answer lives until the key expires (or the tenant goes).
    assert [(r["key"], r["response_id"], r["conversation_id"], r["status_code"]) for r in left] == [
        ("k-conv", None, None, 404),
        ("k-del", None, None, 404),
        ("k-nostore", None, None, 200),
    ]
    assert b"Secret" not in bytes(left[1]["body"]) and b"not_found" in bytes(left[1]["body"])
    retried = await alice.http.post("/v1/conversations", json={}, headers=keyed("k-conv"))
    assert retried.status_code == 404 and retried.headers["idempotent-replayed"] == "true"
    assert retried.json()["error"]["message"] == f"Conversation with id '{conversation}' not found."
    assert await scalar(db, "SELECT count(*) FROM conversation") == 0


async def test_deleting_an_item_leaves_the_key_that_added_it_answering_404(alice: Tenant, db: AsyncEngine) -> None:
    """The answer of POST .../items lists the items it added, text and all: once one of them is deleted, a replay
    must not show it again, nor a retry add it again. Another request's answer stays as it was."""
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    path = f"/v1/conversations/{conversation}/items"
    private = {"items": [{"type": "message", "role": "user", "content": "PRIVATE note"}]}
    other = {"items": [{"type": "message", "role": "user", "content": "kept note"}]}
    added = await alice.http.post(path, json=private, headers=keyed("items-private"))
    kept = await alice.http.post(path, json=other, headers=keyed("items-kept"))
    item_id = added.json()["data"][0]["id"]
    assert (await alice.http.delete(f"{path}/{item_id}")).status_code == 200

    replayed = await alice.http.post(path, json=private, headers=keyed("items-private"))
    assert replayed.status_code == 404 and replayed.headers["idempotent-replayed"] == "true"
    assert "PRIVATE" not in replayed.text and item_id in replayed.json()["error"]["message"]
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 1
    again = await alice.http.post(path, json=other, headers=keyed("items-kept"))
    assert again.status_code == 200 and again.json() == kept.json()
    (stored,) = await rows(db, "SELECT body FROM idempotency_key WHERE key = 'items-private'")
    assert b"PRIVATE" not in bytes(stored["body"])


async def test_expired_keys_are_purged_and_can_be_reused(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    live = start_server(idempotency_key_ttl=1.0, turn_lock_ttl=4.0)  # the reaper runs every second
    carol = await make_tenant("carol", live=live)
    first = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "One"}, headers=keyed("k-ttl"))
    assert first.status_code == 200

    async def purged() -> bool:
        return await scalar(db, "SELECT count(*) FROM idempotency_key") == 0

    await eventually(purged, timeout=8)
    reused = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "Two"}, headers=keyed("k-ttl"))
    assert reused.status_code == 200
    assert reused.json()["id"] != first.json()["id"]
    assert len(fake_upstream.requests) == 2


async def test_request_without_valid_key_is_left_to_the_auth_guard(
    anonymous: httpx.AsyncClient, db: AsyncEngine
) -> None:
    answer = await anonymous.post("/v1/responses", json={"model": MODEL, "input": "Hi"}, headers={**keyed("k" * 300)})
    assert answer.status_code == 401
    assert await scalar(db, "SELECT count(*) FROM idempotency_key") == 0


async def test_streamed_turn_replays_the_stored_event_stream(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Streamed answer.")))
    body = {"model": MODEL, "input": "Stream it", "stream": True}
    first = await alice.http.post("/v1/responses", json=body, headers=keyed("k-sse"))
    again = await alice.http.post("/v1/responses", json=body, headers=keyed("k-sse"))
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.content == first.content
    assert b"response.completed" in again.content
    assert len(fake_upstream.requests) == 1


async def test_a_key_is_held_for_its_holders_turn_lock_ttl_not_the_retrying_processs(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """The first request runs on a process with the default TURN_LOCK_TTL; a retry reaches one with a TTL of 1 s
    after 2 s. Judged by the retrying process's TTL the key looked abandoned and the turn ran a second time."""
    patient = start_server()
    hasty = start_server(turn_lock_ttl=1.0)
    tenant = await make_tenant("ttls", live=patient)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Once."), delay=3.0))
    body = {"model": MODEL, "input": "Only once"}
    first = asyncio.create_task(tenant.http.post("/v1/responses", json=body, headers=keyed("k-held")))
    await eventually(lambda: _upstream_calls(fake_upstream, 1))
    await asyncio.sleep(2.0)
    async with httpx.AsyncClient(base_url=hasty.url, headers={"Authorization": f"Bearer {tenant.key}"}) as other:
        retry = await other.post("/v1/responses", json=body, headers=keyed("k-held"))
        assert retry.status_code == 409, retry.text
        assert retry.json()["error"]["code"] == "idempotency_key_in_use"
        answer = await first
        assert answer.status_code == 200, answer.text
        replay = await other.post("/v1/responses", json=body, headers=keyed("k-held"))
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == answer.json()["id"]
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT count(*) FROM response") == 1


async def _upstream_calls(fake: FakeOpenRouter, count: int) -> bool:
    return len(fake.requests) >= count


# -- a key whose holder died after storing its turn --------------------------------------------------------------
# A process killed after its turn's finish committed and before it completed the key leaves the key in_progress,
# held by that process, with the turn stored. These tests set that state up from a turn served normally: the key
# row is put back as the kill leaves it, before the process is made to look dead: the reaper releases the keys
# of a process in the pass that finds it dead, so a key given to a process already found dead would never be.


async def _rewind_key(db: AsyncEngine, key: str, *, holder: str | None, held_for: float) -> None:
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE idempotency_key SET state = 'in_progress', status_code = NULL, headers = NULL, body = NULL,"
                " response_id = NULL, conversation_id = NULL, answer_response_id = NULL, holder_process = :holder,"
                " held_until = now() + make_interval(secs => :held_for) WHERE key = :key"
            ),
            {"key": key, "holder": holder, "held_for": held_for},
        )


async def _a_process_that_stopped_heartbeating(db: AsyncEngine, process_id: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout)"
                " VALUES (:id, 'elsewhere', 1, now() - interval '1 hour', 1)"
            ),
            {"id": process_id},
        )


async def _retry_until_answered(client: httpx.AsyncClient, body: dict[str, object], key: str) -> httpx.Response:
    for _ in range(200):
        answer = await client.post("/v1/responses", json=body, headers=keyed(key))
        if answer.status_code != 409:
            return answer
        assert answer.json()["error"]["code"] == "idempotency_key_in_use", answer.text
        await asyncio.sleep(0.05)
    raise AssertionError("the key stayed in use")


async def test_a_key_whose_process_died_after_storing_its_turn_replays_the_turn(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """The reaper that takes the holder for dead completes the key from the stored turn instead of freeing it:
    freed, the retry ran the turn again and appended its input a second time."""
    live = start_server(process_heartbeat_timeout=0.5)
    tenant = await make_tenant("died-after-finish", live=live)
    conversation = await new_conversation(tenant.http)
    fake_upstream.reply_json(text_response("Once.", msg_id="msg_once"))
    body = {"model": MODEL, "input": "Only once", "conversation": conversation}
    first = await tenant.http.post("/v1/responses", json=body, headers=keyed("k-died"))
    assert first.status_code == 200, first.text
    assert await scalar(db, "SELECT idempotency_key FROM response WHERE id = :r", r=first.json()["id"]) == "k-died"

    await _rewind_key(db, "k-died", holder="proc_killed", held_for=3600)
    await _a_process_that_stopped_heartbeating(db, "proc_killed")
    retry = await _retry_until_answered(tenant.http, body, "k-died")

    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert retry.json() == first.json()
    assert len(fake_upstream.requests) == 1
    said = await rows(db, "SELECT text_content FROM item WHERE conversation_id = :c AND NOT is_output", c=conversation)
    assert said == [{"text_content": "Only once"}]
    [stored] = await rows(db, "SELECT state, response_id, answer_response_id, body FROM idempotency_key")
    assert stored["state"] == "completed" and stored["response_id"] == first.json()["id"]
    assert stored["answer_response_id"] is None and bytes(stored["body"]) == retry.content  # settled on replay
    again = await tenant.http.post("/v1/responses", json=body, headers=keyed("k-died"))
    assert again.content == retry.content


async def test_a_stream_key_held_past_its_deadline_replays_the_stored_stream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A key held past its held_until (its holder gone with no reaper to notice) is not taken over when its turn
    is stored: the retry gets the turn's event stream, with the headers the stream was first sent with."""
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Streamed once.", chunks=3)))
    body = {"model": MODEL, "input": "Stream it", "stream": True}
    first = await alice.http.post("/v1/responses", json=body, headers=keyed("k-stream"))
    assert first.status_code == 200, first.text

    await _rewind_key(db, "k-stream", holder=None, held_for=-1)
    retry = await alice.http.post("/v1/responses", json=body, headers=keyed("k-stream"))

    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    sent = {name: value for name, value in first.headers.items() if name not in ("date", "x-request-id")}
    replayed = {name: value for name, value in retry.headers.items() if name not in ("date", "x-request-id")}
    assert replayed == {**sent, "idempotent-replayed": "true"}
    assert retry.text == first.text
    assert len(fake_upstream.requests) == 1
    assert await scalar(db, "SELECT count(*) FROM response") == 1


async def test_a_chain_turn_key_held_past_its_deadline_replays_the_stored_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A `previous_response_id` turn is stored whole by its finish (no row exists while it runs): a key left
    in_progress past its deadline after that finish is answered from the stored response, and the chain's
    totals count the turn once."""
    root = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Start"})
    assert root.status_code == 200, root.text
    fake_upstream.reply_json(text_response("Continued once.", msg_id="msg_continued"))
    body = {"model": MODEL, "input": "Go on", "previous_response_id": root.json()["id"]}
    first = await alice.http.post("/v1/responses", json=body, headers=keyed("k-chain"))
    assert first.status_code == 200, first.text

    await _rewind_key(db, "k-chain", holder=None, held_for=-1)
    retry = await alice.http.post("/v1/responses", json=body, headers=keyed("k-chain"))

    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert len(fake_upstream.requests) == 2
    assert await scalar(db, "SELECT count(*) FROM response") == 2
    said = await rows(db, "SELECT text_content FROM item WHERE NOT is_output ORDER BY pk")
    assert said == [{"text_content": "Start"}, {"text_content": "Go on"}]
    [chain] = await rows(db, "SELECT response_count, item_count FROM response_chain")
    assert chain == {"response_count": 2, "item_count": 4}
    [stored] = await rows(db, "SELECT state, response_id FROM idempotency_key WHERE key = 'k-chain'")
    assert stored == {"state": "completed", "response_id": first.json()["id"]}


async def test_a_key_whose_process_died_after_its_turn_failed_is_freed_for_a_retry(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A failed turn appended nothing, and its answer was an HTTP error whose status is not stored: its key is
    freed as before, and the retry runs the turn."""
    live = start_server(process_heartbeat_timeout=0.5)
    tenant = await make_tenant("died-after-failure", live=live)
    conversation = await new_conversation(tenant.http)
    fake_upstream.reply_json({"error": {"code": 400, "message": "Prompt too long"}}, status=400)
    fake_upstream.reply_json(text_response("Second time lucky."))
    body = {"model": MODEL, "input": "Try me", "conversation": conversation}
    first = await tenant.http.post("/v1/responses", json=body, headers=keyed("k-failed"))
    assert first.status_code == 400, first.text

    await _rewind_key(db, "k-failed", holder="proc_killed_too", held_for=3600)
    await _a_process_that_stopped_heartbeating(db, "proc_killed_too")
    await eventually(lambda: _key_count(db, "k-failed", 0))
    retry = await tenant.http.post("/v1/responses", json=body, headers=keyed("k-failed"))

    assert retry.status_code == 200, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert len(fake_upstream.requests) == 2
    statuses = await rows(
        db, "SELECT status FROM response WHERE conversation_id = :c ORDER BY created_at", c=conversation
    )
    assert statuses == [{"status": "failed"}, {"status": "completed"}]
    said = await rows(db, "SELECT text_content FROM item WHERE conversation_id = :c AND NOT is_output", c=conversation)
    assert said == [{"text_content": "Try me"}]


async def _key_count(db: AsyncEngine, key: str, count: int) -> bool:
    return await scalar(db, "SELECT count(*) FROM idempotency_key WHERE key = :k", k=key) == count


async def test_a_replay_is_logged_with_its_tenant_and_response(alice: Tenant, caplog: pytest.LogCaptureFixture) -> None:
    """Answered by the key, not the route: its access line named no tenant, so per-tenant audits missed replays."""
    caplog.set_level(logging.INFO, logger="service.access")
    headers = {"Idempotency-Key": "logged-replay"}
    body = {"model": MODEL, "input": "hi"}
    first = await alice.http.post("/v1/responses", json=body, headers=headers)
    again = await alice.http.post("/v1/responses", json=body, headers=headers)
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    *_, replay = [getattr(r, "fields", {}) for r in caplog.records if r.name == "service.access"]
    assert replay["idempotent_replayed"] is True
    assert replay["tenant"] == "alice" and replay["response_id"] == first.json()["id"], replay


async def test_two_idempotency_keys_or_two_authorization_headers_are_refused_and_nothing_runs(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Which of two headers a proxy in front of the service read, and which one the service would read, need not
    be the same: a request carrying either header twice is refused, whichever values they hold."""
    body = {"model": MODEL, "input": "Hello"}
    cases = [
        (
            "Idempotency-Key",
            [("authorization", f"Bearer {alice.key}"), ("idempotency-key", "k-a"), ("idempotency-key", "k-b")],
        ),
        (
            "Idempotency-Key",
            [("authorization", f"Bearer {alice.key}"), ("idempotency-key", "k-a"), ("idempotency-key", "k-a")],
        ),
        ("Authorization", [("authorization", f"Bearer {alice.key}"), ("authorization", f"Bearer {bob.key}")]),
        ("Authorization", [("authorization", f"Bearer {alice.key}"), ("authorization", "Bearer wrong")]),
        (
            "Authorization",
            [
                ("authorization", f"Bearer {alice.key}"),
                ("authorization", f"Bearer {alice.key}"),
                ("idempotency-key", "k-c"),
            ],
        ),
    ]
    async with httpx.AsyncClient(base_url=alice.base_url) as http:
        for name, headers in cases:
            for method, path, json_body in [
                ("POST", "/v1/responses", body),
                ("POST", "/v1/conversations", {}),
                ("GET", "/v1/responses/resp_missing", None),
            ]:
                answer = await http.request(method, path, json=json_body, headers=httpx.Headers(headers))
                if name == "Idempotency-Key" and method == "GET":
                    assert answer.status_code == 404, answer.text  # a read takes no key: nothing to refuse
                    continue
                assert answer.status_code == 400, (headers, path, answer.text)
                assert answer.json() == {
                    "error": {
                        "message": f"Send one {name} header, not several",
                        "type": "invalid_request_error",
                        "param": name,
                        "code": "duplicate_header",
                    }
                }
        # A caller without a valid key is told that first, as with one Idempotency-Key.
        for auth in ([], [("authorization", "Bearer sk-cs-wrong")]):
            headers = httpx.Headers([*auth, ("idempotency-key", "k-a"), ("idempotency-key", "k-b")])
            answer = await http.post("/v1/responses", json=body, headers=headers)
            assert answer.status_code == 401, answer.text
    assert fake_upstream.requests == []
    assert await scalar(db, "SELECT count(*) FROM response") == 0
    assert await scalar(db, "SELECT count(*) FROM conversation") == 0
    assert await scalar(db, "SELECT count(*) FROM idempotency_key") == 0
