"""Data that must not outlive its deletion: a deleted response is not replayed (nor run again) through the
Idempotency-Key of the request that created it; a response kept hidden as history goes once nothing needs it; a
deleted item's text leaves the conversation's title. And a delete never takes the history from under a turn
still running on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response
from tests.reliability_support import a_dead_turns_running_child_note, eventually
from tests.turn_support import MODEL, assistant, rows, turn, user


@pytest.fixture
async def admin_http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


async def test_a_deleted_response_with_a_child_is_not_replayed_by_its_idempotency_key(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    request = {"model": MODEL, "input": "My password is ZEBRA-QUOKKA"}
    fake_upstream.reply_json(text_response("Noted: your password is ZEBRA-QUOKKA"))
    first = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-parent"})
    assert first.status_code == 200, first.text
    assert "ZEBRA" in first.text
    parent = first.json()["id"]
    child = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "And?", "previous_response_id": parent}
    )
    assert child.status_code == 200, child.text
    assert (await alice.http.delete(f"/v1/responses/{parent}")).status_code == 200
    assert await rows(db, "SELECT deleted_at IS NOT NULL AS hidden FROM response WHERE id = :r", r=parent) == [
        {"hidden": True}
    ]

    replay = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-parent"})
    assert replay.status_code == 404, replay.text
    assert replay.json()["error"]["code"] == "not_found"
    assert "ZEBRA" not in replay.text
    assert len(fake_upstream.requests) == 2, "the retry ran the turn again"
    [kept] = await rows(db, "SELECT body FROM idempotency_key WHERE key = 'k-parent'")
    assert b"ZEBRA" not in bytes(kept["body"])


async def test_a_deleted_response_without_children_is_not_run_again_by_its_idempotency_key(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    request = {"model": MODEL, "input": "Charge me once"}
    first = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-leaf"})
    assert first.status_code == 200, first.text
    assert (await alice.http.delete(f"/v1/responses/{first.json()['id']}")).status_code == 200
    assert await rows(db, "SELECT id FROM response") == []

    retry = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-leaf"})
    assert retry.status_code == 404, retry.text
    assert retry.json()["error"]["code"] == "not_found"
    assert len(fake_upstream.requests) == 1, "the retry ran the turn again"
    assert await rows(db, "SELECT id FROM response") == []


async def test_hidden_ancestors_go_once_nothing_builds_on_them(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A deleted response a later one builds on is hidden, kept as that one's history; deleting the later one
    leaves nothing needing it, so it goes too, with its items, and so on up the chain."""
    fake_upstream.reply_json(text_response("Noted: 4111-1111"))
    root = await turn(alice.http, "my card is 4111-1111")
    middle = await turn(alice.http, "and my pin is 9876", previous_response_id=root["id"])
    leaf = await turn(alice.http, "thanks", previous_response_id=middle["id"])
    branch = await turn(alice.http, "another branch", previous_response_id=root["id"])
    for hidden in (root, middle):
        assert (await alice.http.delete(f"/v1/responses/{hidden['id']}")).status_code == 200
    assert {r["id"] for r in await rows(db, "SELECT id FROM response WHERE deleted_at IS NOT NULL")} == {
        root["id"],
        middle["id"],
    }

    # The middle one is needed by nothing once the leaf goes; the root is still the branch's history.
    assert (await alice.http.delete(f"/v1/responses/{leaf['id']}")).status_code == 200
    assert {r["id"] for r in await rows(db, "SELECT id FROM response")} == {root["id"], branch["id"]}
    assert await rows(db, "SELECT id FROM item WHERE text_content LIKE '%9876%'") == []
    fake_upstream.reply_json(text_response("ok"))
    whole = await turn(alice.http, "still whole?", previous_response_id=branch["id"])
    assert fake_upstream.inputs[-1][0] == user("my card is 4111-1111")

    for gone in (whole, branch):
        assert (await alice.http.delete(f"/v1/responses/{gone['id']}")).status_code == 200
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item WHERE text_content LIKE '%4111%'") == []
    assert await rows(db, "SELECT id FROM response_chain WHERE id = :r", r=root["id"]) == []


async def test_of_many_deletes_of_one_response_at_once_one_deletes_it_and_the_others_find_it_gone(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Each delete locks the row, then reads it again: one that waited for another's lock finds the row gone (or
    hidden, when a later response builds on it) and answers 404, not a second `deleted: true`."""
    fake_upstream.reply_json(text_response("ok"))
    root = await turn(alice.http, "root")
    child = await turn(alice.http, "child", previous_response_id=root["id"])
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    in_conversation = await turn(alice.http, "in a conversation", conversation=conversation)
    for target in (root, child, in_conversation):  # hidden (a child builds on it), deleted, a conversation's
        answers = await asyncio.gather(*(alice.http.delete(f"/v1/responses/{target['id']}") for _ in range(10)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] + [404] * 9, statuses
        refused = next(answer for answer in answers if answer.status_code == 404)
        assert refused.json()["error"]["code"] == "not_found"
    assert await rows(db, "SELECT id FROM response") == []
    assert len(await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=conversation)) == 2


async def test_deleting_the_item_that_titled_a_conversation_takes_its_text_out_of_the_title(
    alice: Tenant, admin_http: httpx.AsyncClient
) -> None:
    items = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "my card number is 4111-1111"},
        {"role": "user", "content": "second question"},
    ]
    created = await alice.http.post("/v1/conversations", json={"items": items})
    conversation = created.json()["id"]

    async def title() -> Any:
        answer = await admin_http.get(f"/admin/conversations/{conversation}")
        assert answer.status_code == 200, answer.text
        return answer.json()["title"]

    assert await title() == "my card number is 4111-1111"
    listed = (await alice.http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()["data"]
    system, card, second = (item["id"] for item in listed)
    assert (await alice.http.delete(f"/v1/conversations/{conversation}/items/{system}")).status_code == 200
    assert await title() == "my card number is 4111-1111"
    assert (await alice.http.delete(f"/v1/conversations/{conversation}/items/{card}")).status_code == 200
    assert await title() == "second question"
    assert (await alice.http.delete(f"/v1/conversations/{conversation}/items/{second}")).status_code == 200
    assert await title() is None


async def _a_plain_turn_running_on(
    client: httpx.AsyncClient, fake: FakeOpenRouter, previous_id: str, *, delay: float
) -> asyncio.Task[httpx.Response]:
    """A turn continuing `previous_id`, neither streamed nor background (nothing of it is stored before its end),
    once its upstream call has begun."""
    fake.enqueue(Reply(kind="json", body=text_response("Slow answer.", msg_id="msg_slow"), delay=delay))
    calls = len(fake.requests)
    running = asyncio.create_task(
        client.post("/v1/responses", json={"model": MODEL, "input": "Go on", "previous_response_id": previous_id})
    )

    async def upstream_called() -> bool:
        return len(fake.requests) > calls

    await eventually(upstream_called)
    return running


async def test_a_response_deleted_while_a_plain_turn_continues_it_stays_that_turns_history(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The delete answers as always and the response reads as deleted, but it is only hidden, as it is for a
    stored child: the turn's response is stored linked to it, in its thread, and continues with its history.
    It goes once nothing builds on it. (Deleted outright, the turn stored a response detached from its history:
    its own thread, previous_response_id null, though its answer named the parent.)"""
    fake_upstream.reply_json(text_response("Noted: ORCA.", msg_id="msg_first"))
    first = (await turn(alice.http, "Remember ORCA"))["id"]
    running = await _a_plain_turn_running_on(alice.http, fake_upstream, first, delay=1.0)
    assert await rows(db, "SELECT previous_response_id FROM running_chain_turn") == [{"previous_response_id": first}]

    deleted = await alice.http.delete(f"/v1/responses/{first}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": first, "object": "response", "deleted": True}
    assert (await alice.http.get(f"/v1/responses/{first}")).status_code == 404
    assert await rows(db, "SELECT deleted_at IS NOT NULL AS hidden FROM response WHERE id = :r", r=first) == [
        {"hidden": True}
    ]

    answer = await running
    assert answer.status_code == 200, answer.text
    assert answer.json()["previous_response_id"] == first
    child = answer.json()["id"]
    stored = await rows(db, "SELECT previous_response_id, thread_id FROM response WHERE id = :r", r=child)
    assert stored == [{"previous_response_id": first, "thread_id": first}]
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []

    fake_upstream.reply_json(text_response("Still ORCA.", msg_id="msg_third"))
    third = (await turn(alice.http, "Which word?", previous_response_id=child))["id"]
    assert fake_upstream.inputs[-1] == [
        user("Remember ORCA"),
        assistant("Noted: ORCA.", "msg_first"),
        user("Go on"),
        assistant("Slow answer.", "msg_slow"),
        user("Which word?"),
    ]
    for response_id in (third, child):
        assert (await alice.http.delete(f"/v1/responses/{response_id}")).status_code == 200
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT pk FROM item") == []


async def test_a_response_hidden_for_a_turn_whose_process_died_goes_when_the_turns_note_expires(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    """A plain turn's process died before its finish: its note as the running child of the response it
    continued stays until its TURN_LOCK_TTL, so a delete of that response meanwhile only hides it. The expiry
    sweep then removes the note and the response, which nothing builds on."""
    tenant = await make_tenant("died-midturn", live=start_server(turn_lock_ttl=1.0))  # its sweep runs every second
    first = (await turn(tenant.http, "Forget me"))["id"]
    await a_dead_turns_running_child_note(db, first, expires_in=1.0)
    assert (await tenant.http.delete(f"/v1/responses/{first}")).status_code == 200
    assert await rows(db, "SELECT deleted_at IS NOT NULL AS hidden FROM response WHERE id = :r", r=first) == [
        {"hidden": True}
    ]

    async def gone() -> bool:
        return await rows(db, "SELECT id FROM response") == []

    await eventually(gone)
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []
    assert await rows(db, "SELECT pk FROM item") == []
