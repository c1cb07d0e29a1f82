"""Tenants cannot see or touch each other's objects: on every /v1 route that takes an id, another tenant's id
answers exactly like an id that does not exist, and nothing of the other tenant changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.reliability_support import requests_waiting_on_a_lock
from tests.turn_support import MODEL, new_conversation, rows, turn

MISSING_CONV = "conv_0000000000000000000000000000000000000000000"
MISSING_RESP = "resp_0000000000000000000000000000000000000000000"
MISSING_ITEM = "msg_0000000000000000000000000000000000000000000"


async def _snapshot(db: AsyncEngine, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    return {
        table: await rows(db, f"SELECT * FROM {table} WHERE tenant_id = :t ORDER BY id", t=tenant_id)
        for table in ("conversation", "response", "item")
    }


async def _tenant_id(db: AsyncEngine, key_id: str) -> str:
    (row,) = await rows(db, "SELECT tenant_id FROM api_key WHERE id = :k", k=key_id)
    tenant_id: str = row["tenant_id"]
    return tenant_id


async def _bobs_objects(bob: Tenant, fake_upstream: FakeOpenRouter) -> dict[str, str]:
    conv = await new_conversation(bob.http, metadata={"owner": "bob"}, items=[{"role": "user", "content": "seed"}])
    fake_upstream.reply_json(text_response("bob answer", msg_id="msg_bob_out"))
    in_conv = await turn(bob.http, "bob question", conversation=conv)
    chained = await turn(bob.http, "bob chained", previous_response_id=in_conv["id"])
    seed = (await bob.http.get(f"/v1/conversations/{conv}/items", params={"order": "asc"})).json()["data"][0]
    input_item = (await bob.http.get(f"/v1/responses/{chained['id']}/input_items")).json()["data"][0]
    return {
        "conv": conv,
        "resp": in_conv["id"],
        "chained": chained["id"],
        "item": seed["id"],
        "input": input_item["id"],
    }


def _same_answer(theirs: Any, missing: Any, their_id: str, missing_id: str) -> None:
    assert theirs.status_code == missing.status_code, (theirs.text, missing.text)
    assert theirs.status_code in {400, 404}
    assert theirs.text.replace(their_id, "ID") == missing.text.replace(missing_id, "ID")


async def test_another_tenants_ids_answer_like_missing_ids(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    theirs = await _bobs_objects(bob, fake_upstream)
    bob_tenant = await _tenant_id(db, bob.key_id)
    before = await _snapshot(db, bob_tenant)
    requests_before = len(fake_upstream.requests)

    own_conv = await new_conversation(alice.http, items=[{"role": "user", "content": "alice seed"}])
    own_resp = (await turn(alice.http, "alice q"))["id"]
    requests_before += 1

    conv, resp, item = theirs["conv"], theirs["resp"], theirs["item"]
    cases: list[tuple[str, str, str, Any, str, str]] = [
        # (method, path template with {id}, their id, json body, missing id, description)
        ("GET", "/v1/conversations/{id}", conv, None, MISSING_CONV, "retrieve conversation"),
        ("POST", "/v1/conversations/{id}", conv, {"metadata": {"owner": "alice"}}, MISSING_CONV, "update"),
        ("DELETE", "/v1/conversations/{id}", conv, None, MISSING_CONV, "delete conversation"),
        ("POST", "/v1/conversations/{id}/items", conv, {"items": [{"role": "user", "content": "x"}]}, MISSING_CONV, ""),
        ("GET", "/v1/conversations/{id}/items", conv, None, MISSING_CONV, "list items"),
        ("GET", "/v1/conversations/{id}/items/" + item, conv, None, MISSING_CONV, "their conversation, their item"),
        ("DELETE", "/v1/conversations/{id}/items/" + item, conv, None, MISSING_CONV, "delete their item"),
        ("GET", f"/v1/conversations/{own_conv}/items/{{id}}", item, None, MISSING_ITEM, "own conversation"),
        ("DELETE", f"/v1/conversations/{own_conv}/items/{{id}}", item, None, MISSING_ITEM, "own conversation"),
        ("GET", f"/v1/conversations/{own_conv}/items?after={{id}}", item, None, MISSING_ITEM, "cursor"),
        ("GET", "/v1/responses/{id}", resp, None, MISSING_RESP, "retrieve response"),
        ("DELETE", "/v1/responses/{id}", resp, None, MISSING_RESP, "delete response"),
        ("GET", "/v1/responses/{id}/input_items", resp, None, MISSING_RESP, "input items"),
        ("GET", f"/v1/responses/{own_resp}/input_items?after={{id}}", theirs["input"], None, MISSING_ITEM, "cursor"),
        ("POST", "/v1/responses", conv, {"model": MODEL, "input": "x", "conversation": "{id}"}, MISSING_CONV, "turn"),
        (
            "POST",
            "/v1/responses",
            resp,
            {"model": MODEL, "input": "x", "previous_response_id": "{id}"},
            MISSING_RESP,
            "chain",
        ),
        (
            "POST",
            "/v1/responses",
            theirs["chained"],
            {"model": MODEL, "input": "x", "previous_response_id": "{id}", "store": False},
            MISSING_RESP,
            "chain without storing",
        ),
    ]
    for method, template, their_id, body, missing_id, _ in cases:

        def fill(value: Any, id_: str) -> Any:
            if isinstance(value, str):
                return value.replace("{id}", id_)
            if isinstance(value, dict):
                return {k: fill(v, id_) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v, id_) for v in value]
            return value

        answer_theirs = await alice.http.request(method, fill(template, their_id), json=fill(body, their_id))
        answer_missing = await alice.http.request(method, fill(template, missing_id), json=fill(body, missing_id))
        _same_answer(answer_theirs, answer_missing, their_id, missing_id)

    assert await _snapshot(db, bob_tenant) == before
    assert len(fake_upstream.requests) == requests_before
    # And bob still sees everything as it was.
    assert (await bob.http.get(f"/v1/conversations/{conv}")).json()["metadata"] == {"owner": "bob"}
    assert (await bob.http.get(f"/v1/responses/{resp}")).status_code == 200
    listed = (await bob.http.get(f"/v1/conversations/{conv}/items")).json()["data"]
    assert len(listed) == 3


async def test_each_tenant_sees_only_its_own_history(alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conv_a = await new_conversation(alice.http)
    conv_b = await new_conversation(bob.http)
    fake_upstream.reply_json(text_response("to alice", msg_id="msg_to_alice"))
    fake_upstream.reply_json(text_response("to bob", msg_id="msg_to_bob"))
    await turn(alice.http, "alice 1", conversation=conv_a)
    await turn(bob.http, "bob 1", conversation=conv_b)
    await turn(alice.http, "alice 2", conversation=conv_a)
    await turn(bob.http, "bob 2", conversation=conv_b)
    texts_a = [part["text"] for item in fake_upstream.inputs[2] for part in item["content"]]
    texts_b = [part["text"] for item in fake_upstream.inputs[3] for part in item["content"]]
    assert texts_a == ["alice 1", "to alice", "alice 2"]
    assert texts_b == ["bob 1", "to bob", "bob 2"]


async def test_another_tenants_item_cannot_be_referenced(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(text_response("bob's secret", msg_id="msg_bob_secret"))
    await turn(bob.http, "bob q")
    conv = await new_conversation(alice.http)
    for path, body_of in [
        ("/v1/responses", lambda ref: {"model": MODEL, "input": [{"type": "item_reference", "id": ref}]}),
        ("/v1/responses", lambda ref: {"model": MODEL, "input": [{"id": ref}], "store": False}),
        (f"/v1/conversations/{conv}/items", lambda ref: {"items": [{"type": "item_reference", "id": ref}]}),
        ("/v1/conversations", lambda ref: {"items": [{"type": "item_reference", "id": ref}]}),
    ]:
        theirs = await alice.http.post(path, json=body_of("msg_bob_secret"))
        missing = await alice.http.post(path, json=body_of(MISSING_ITEM))
        _same_answer(theirs, missing, "msg_bob_secret", MISSING_ITEM)
    assert len(fake_upstream.requests) == 1
    assert "bob's secret" not in str(await rows(db, "SELECT body FROM item WHERE conversation_id IS NOT NULL"))


async def test_concurrent_requests_with_an_uncached_key_look_it_up_once(
    make_tenant: Callable[..., Awaitable[Tenant]], db: AsyncEngine
) -> None:
    """When a busy key's cache entry expires, every request in flight misses at once; they must share one
    lookup, not each hold a pooled connection waiting on the key's row (its last_used_at update)."""
    carol = await make_tenant("carol")

    async with db.connect() as holder:
        await holder.execute(text("SELECT 1 FROM api_key WHERE id = :id FOR UPDATE"), {"id": carol.key_id})
        requests = [asyncio.create_task(carol.http.get("/v1/conversations/conv_missing")) for _ in range(6)]
        deadline = asyncio.get_running_loop().time() + 10
        while await requests_waiting_on_a_lock(db) == 0:
            assert asyncio.get_running_loop().time() < deadline, "no request reached the key's row"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for the other five to pile up, if they were going to
        assert await requests_waiting_on_a_lock(db) == 1
        await holder.rollback()
    answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [404] * 6
    assert {a.json()["error"]["message"] for a in answers} == {"Conversation with id 'conv_missing' not found."}
