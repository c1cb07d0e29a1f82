"""/v1/conversations and their items through plain HTTP: shapes, stored rows, pagination, deletion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response
from tests.turn_support import assistant, conversation_items, new_conversation, rows, shown, turn, user


def _message(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


async def test_create_conversation_with_items_and_metadata(alice: Tenant, db: AsyncEngine) -> None:
    answer = await alice.http.post(
        "/v1/conversations",
        json={
            "metadata": {"topic": "demo"},
            "items": [
                {"type": "message", "role": "user", "content": "Hello!"},
                {"role": "system", "content": [{"type": "input_text", "text": "Be brief."}]},
                {"type": "message", "role": "assistant", "content": "Hi.", "id": "msg_given"},
            ],
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"id", "object", "created_at", "metadata"}
    assert body["id"].startswith("conv_")
    assert body["object"] == "conversation"
    assert body["metadata"] == {"topic": "demo"}
    assert isinstance(body["created_at"], int)

    stored = await conversation_items(db, body["id"])
    assert [(r["position"], r["type"], r["role"], r["status"], r["response_id"]) for r in stored] == [
        (0, "message", "user", "completed", None),
        (1, "message", "system", "completed", None),
        (2, "message", "assistant", "completed", None),
    ]
    assert stored[0]["id"].startswith("msg_") and stored[1]["id"].startswith("msg_")
    assert stored[2]["id"] == "msg_given"
    assert json.loads(stored[0]["body"]) == _message("Hello!")
    assert json.loads(stored[2]["body"]) == {
        "type": "message",
        "role": "assistant",
        "id": "msg_given",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hi.", "annotations": []}],
    }
    (conv_row,) = await rows(
        db, "SELECT item_count, next_position, metadata FROM conversation WHERE id = :c", c=body["id"]
    )
    assert conv_row == {"item_count": 3, "next_position": 3, "metadata": {"topic": "demo"}}


async def test_retrieve_update_and_delete_conversation(alice: Tenant, db: AsyncEngine) -> None:
    conv = await new_conversation(alice.http, metadata={"a": "1"})
    got = await alice.http.get(f"/v1/conversations/{conv}")
    assert got.status_code == 200
    assert got.json()["metadata"] == {"a": "1"}

    updated = await alice.http.post(f"/v1/conversations/{conv}", json={"metadata": {"b": "2"}})
    assert updated.status_code == 200, updated.text
    assert updated.json() == {**got.json(), "metadata": {"b": "2"}}
    assert (await alice.http.get(f"/v1/conversations/{conv}")).json()["metadata"] == {"b": "2"}

    missing = await alice.http.post(f"/v1/conversations/{conv}", json={})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "metadata"

    deleted = await alice.http.delete(f"/v1/conversations/{conv}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": conv, "object": "conversation.deleted", "deleted": True}
    assert await rows(db, "SELECT id FROM conversation") == []
    for method, path in [
        ("GET", f"/v1/conversations/{conv}"),
        ("POST", f"/v1/conversations/{conv}"),
        ("DELETE", f"/v1/conversations/{conv}"),
        ("GET", f"/v1/conversations/{conv}/items"),
    ]:
        again = await alice.http.request(method, path, json={"metadata": {}} if method == "POST" else None)
        assert again.status_code == 404, (method, path)
        assert again.json()["error"]["message"] == f"Conversation with id '{conv}' not found."


async def test_deleting_a_conversation_keeps_its_responses(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conv = await new_conversation(alice.http, items=[_message("seed")])
    fake_upstream.reply_json(text_response("A", msg_id="msg_keep"))
    response = await turn(alice.http, "Q", conversation=conv)
    assert (await alice.http.delete(f"/v1/conversations/{conv}")).status_code == 200

    kept = await alice.http.get(f"/v1/responses/{response['id']}")
    assert kept.status_code == 200
    assert kept.json()["output"] == shown(assistant("A", "msg_keep"))
    inputs = (await alice.http.get(f"/v1/responses/{response['id']}/input_items")).json()["data"]
    assert [{k: v for k, v in i.items() if k not in {"id", "status"}} for i in inputs] == [user("Q")]
    gone = await alice.http.post("/v1/responses", json={"model": "m", "input": "x", "conversation": conv})
    assert gone.status_code == 404
    assert gone.json()["error"]["param"] == "conversation"


async def test_add_items_returns_created_items_with_ids(alice: Tenant, db: AsyncEngine) -> None:
    conv = await new_conversation(alice.http, items=[_message("first")])
    added = await alice.http.post(
        f"/v1/conversations/{conv}/items",
        json={
            "items": [
                _message("second"),
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
            ]
        },
    )
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["object"] == "list"
    assert body["has_more"] is False
    assert [item["type"] for item in body["data"]] == ["message", "function_call", "function_call_output"]
    assert all(item["id"] and item["status"] == "completed" for item in body["data"])
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
    assert body["data"][1]["id"].startswith("fc_")

    stored = await conversation_items(db, conv)
    assert [r["position"] for r in stored] == [0, 1, 2, 3]
    assert [r["id"] for r in stored[1:]] == [item["id"] for item in body["data"]]
    # The minted function_call id is part of the stored body: the upstream requires it.
    assert json.loads(stored[2]["body"])["id"] == body["data"][1]["id"]


async def test_get_and_delete_one_item(alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine) -> None:
    conv = await new_conversation(alice.http, items=[_message("one"), _message("two"), _message("three")])
    stored = await conversation_items(db, conv)
    got = await alice.http.get(f"/v1/conversations/{conv}/items/{stored[1]['id']}")
    assert got.status_code == 200
    assert got.json() == {"id": stored[1]["id"], **_message("two"), "status": "completed"}

    deleted = await alice.http.delete(f"/v1/conversations/{conv}/items/{stored[1]['id']}")
    assert deleted.status_code == 200
    assert deleted.json()["id"] == conv and deleted.json()["object"] == "conversation"
    assert [r["id"] for r in await conversation_items(db, conv)] == [stored[0]["id"], stored[2]["id"]]
    (count,) = await rows(db, "SELECT item_count FROM conversation WHERE id = :c", c=conv)
    assert count == {"item_count": 2}
    for method in ("GET", "DELETE"):
        again = await alice.http.request(method, f"/v1/conversations/{conv}/items/{stored[1]['id']}")
        assert again.status_code == 404

    await turn(alice.http, "four", conversation=conv)
    assert fake_upstream.inputs[0] == [_message("one"), _message("three"), user("four")]


async def test_deleting_a_response_carried_item_keeps_it_on_the_response(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("A", msg_id="msg_carried"))
    response = await turn(alice.http, "Q", conversation=conv)
    assert (await alice.http.delete(f"/v1/conversations/{conv}/items/msg_carried")).status_code == 200
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"]
    assert [item["role"] for item in listed] == ["user"]
    assert (await alice.http.get(f"/v1/responses/{response['id']}")).json()["output"] == shown(
        assistant("A", "msg_carried")
    )
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[1] == [user("Q"), user("Q2")]


async def _conversation_with(alice: Tenant, count: int) -> tuple[str, list[str]]:
    conv = await new_conversation(alice.http, items=[_message(f"m{i}") for i in range(min(count, 20))])
    for start in range(20, count, 20):
        added = await alice.http.post(
            f"/v1/conversations/{conv}/items",
            json={"items": [_message(f"m{i}") for i in range(start, min(count, start + 20))]},
        )
        assert added.status_code == 200
    listed = await alice.http.get(f"/v1/conversations/{conv}/items", params={"order": "asc", "limit": 100})
    ids = [item["id"] for item in listed.json()["data"]]
    assert [item["content"][0]["text"] for item in listed.json()["data"]] == [f"m{i}" for i in range(count)]
    return conv, ids


async def test_item_list_pagination_defaults_to_newest_first_twenty(alice: Tenant) -> None:
    conv, ids = await _conversation_with(alice, 25)
    page = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()
    assert [item["id"] for item in page["data"]] == ids[::-1][:20]
    assert page["first_id"] == ids[24] and page["last_id"] == ids[5]
    assert page["has_more"] is True
    rest = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"after": page["last_id"]})).json()
    assert [item["id"] for item in rest["data"]] == ids[4::-1]
    assert rest["has_more"] is False
    assert rest["first_id"] == ids[4] and rest["last_id"] == ids[0]


async def test_item_list_pagination_ascending_with_limit_and_after(alice: Tenant) -> None:
    conv, ids = await _conversation_with(alice, 7)
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"order": "asc", "limit": 3}
        if after:
            params["after"] = after
        page = (await alice.http.get(f"/v1/conversations/{conv}/items", params=params)).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids
    exact = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"limit": 7})).json()
    assert exact["has_more"] is False and len(exact["data"]) == 7
    one = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"limit": 1, "order": "desc"})).json()
    assert [item["id"] for item in one["data"]] == [ids[-1]] and one["has_more"] is True
    empty = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"after": ids[-1], "order": "asc"})).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


async def test_item_list_rejects_bad_pagination_parameters(alice: Tenant, make_tenant: Any) -> None:
    conv, _ = await _conversation_with(alice, 2)
    # OpenAI's codes where it has one.
    for params, param, code in [
        ({"limit": 0}, "limit", "integer_below_min_value"),
        ({"limit": -3}, "limit", "integer_below_min_value"),
        ({"limit": 101}, "limit", "integer_above_max_value"),
        ({"limit": "ten"}, "limit", "invalid_type"),
        ({"limit": "\uff15"}, "limit", "invalid_type"),  # a full-width 5: int() takes it
        ({"limit": "1_0"}, "limit", "invalid_type"),
        ({"limit": "--5"}, "limit", "invalid_type"),
        ({"limit": "9" * 5000}, "limit", "invalid_type"),  # beyond the digits int() takes at all
        ({"order": "sideways"}, "order", "invalid_value"),
        ({"order": "ASC"}, "order", "invalid_value"),  # OpenAI matches its enum exactly
        ({"after": "msg_nope"}, "after", None),
    ]:
        answer = await alice.http.get(f"/v1/conversations/{conv}/items", params=params)
        assert answer.status_code == 400, params
        assert (answer.json()["error"]["param"], answer.json()["error"]["code"]) == (param, code), params
    admin = (await make_tenant("ops", admin=True)).http
    for route in ("/admin/conversations", "/v1/responses/resp_x/input_items"):
        for limit in ("--5", "9" * 5000):
            answer = await (admin if route.startswith("/admin") else alice.http).get(route, params={"limit": limit})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit", (route, answer.text)
    assert (await alice.http.get(f"/v1/conversations/{conv}/items", params={"limit": 100})).status_code == 200
    sideways = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"order": "Desc"})).json()["error"]
    assert sideways["message"] == "Invalid value: 'Desc'. Supported values are: 'asc' and 'desc'."


async def test_conversation_cannot_be_changed_while_a_turn_is_in_flight(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http, items=[_message("seed")])
    fake_upstream.enqueue(Reply(kind="json", body=text_response("slow", msg_id="msg_slow"), delay=1.0))
    running = asyncio.create_task(turn(alice.http, "Q", conversation=conv))
    await fake_upstream.received()
    seed_id = (await conversation_items(db, conv))[0]["id"]
    for method, path, body in [
        ("DELETE", f"/v1/conversations/{conv}", None),
        ("POST", f"/v1/conversations/{conv}/items", {"items": [_message("x")]}),
        ("DELETE", f"/v1/conversations/{conv}/items/{seed_id}", None),
        ("POST", "/v1/responses", {"model": "m", "input": "y", "conversation": conv}),
    ]:
        answer = await alice.http.request(method, path, json=body)
        assert answer.status_code == 409, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "conversation_locked"
    # A bad item is the client's 400 at once, not a 409 telling it to retry the same refusal.
    bad = await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": [{"type": "bogus"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "items[0].type", bad.text
    missing = {"items": [{"type": "item_reference", "id": "msg_nowhere"}]}
    unknown = await alice.http.post(f"/v1/conversations/{conv}/items", json=missing)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "item_not_found", unknown.text
    nowhere = await alice.http.post("/v1/conversations/conv_nowhere/items", json=missing)
    assert nowhere.status_code == 404 and "Conversation" in nowhere.json()["error"]["message"], nowhere.text
    # Reading is never blocked.
    assert (await alice.http.get(f"/v1/conversations/{conv}/items")).status_code == 200
    await running
    assert len(fake_upstream.requests) == 1
    assert [r["position"] for r in await conversation_items(db, conv)] == [0, 1, 2]
