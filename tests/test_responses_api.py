"""/v1/responses through plain HTTP: the Response object, what is stored, retrieval, deletion, input_items,
store=false, and the previous_response_id / conversation rules."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, response_with_output, text_response
from tests.turn_support import MODEL, assistant, new_conversation, rows, shown, turn, user, without_ids


async def test_create_returns_an_openai_response_and_stores_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    upstream = text_response("Paris.", model="openai/gpt-4o-2024-08-06", msg_id="msg_p")
    upstream["id"] = "gen-upstream-1"
    upstream["usage"]["cost_details"] = {"upstream_inference_cost": None}
    fake_upstream.reply_json(upstream)
    body = await turn(alice.http, "Capital?", metadata={"trace": "t1"}, temperature=0.2)

    assert body["id"].startswith("resp_")
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["model"] == "openai/gpt-4o-2024-08-06"
    assert body["output"] == shown(assistant("Paris.", "msg_p"))
    assert body["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
        "cost": 0.00042,
        "is_byok": False,
        "cost_details": {"upstream_inference_cost": None},
    }
    assert body["metadata"] == {"trace": "t1"}
    assert body["temperature"] == 0.2
    assert body["error"] is None and body["incomplete_details"] is None
    assert body["previous_response_id"] is None and body["conversation"] is None
    assert body["store"] is True
    assert isinstance(body["created_at"], int) and isinstance(body["completed_at"], int)

    (row,) = await rows(
        db,
        "SELECT status, model, upstream_model, upstream_id, usage, cost, input_tokens, output_tokens, metadata, "
        "error, completed_at IS NOT NULL AS completed FROM response WHERE id = :r",
        r=body["id"],
    )
    assert row == {
        "status": "completed",
        "model": MODEL,
        "upstream_model": "openai/gpt-4o-2024-08-06",
        "upstream_id": "gen-upstream-1",
        "usage": upstream["usage"],
        "cost": Decimal("0.00042"),
        "input_tokens": 10,
        "output_tokens": 5,
        "metadata": {"trace": "t1"},
        "error": None,
        "completed": True,
    }
    items = await rows(
        db,
        "SELECT id, is_output, ordinal, body FROM item WHERE response_id = :r ORDER BY is_output, ordinal",
        r=body["id"],
    )
    assert [(i["is_output"], i["ordinal"]) for i in items] == [(False, 0), (True, 0)]
    assert json.loads(items[0]["body"]) == user("Capital?")
    assert json.loads(items[1]["body"]) == assistant("Paris.", "msg_p")

    again = await alice.http.get(f"/v1/responses/{body['id']}")
    assert again.status_code == 200
    assert again.json() == body


async def test_model_actually_used_is_reported_when_falling_back(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(text_response("ok", model="anthropic/claude-3.5-sonnet"))
    body = await turn(alice.http, "Q", models=["openai/gpt-4o", "anthropic/claude-3.5-sonnet"])
    assert fake_upstream.requests[0].body["models"] == ["openai/gpt-4o", "anthropic/claude-3.5-sonnet"]
    assert body["model"] == "anthropic/claude-3.5-sonnet"


async def test_delete_response(alice: Tenant, db: AsyncEngine) -> None:
    body = await turn(alice.http, "Q")
    deleted = await alice.http.delete(f"/v1/responses/{body['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": body["id"], "object": "response", "deleted": True}
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []
    for method, path in [
        ("GET", f"/v1/responses/{body['id']}"),
        ("DELETE", f"/v1/responses/{body['id']}"),
        ("GET", f"/v1/responses/{body['id']}/input_items"),
    ]:
        answer = await alice.http.request(method, path)
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == f"Response with id '{body['id']}' not found."
    gone = await alice.http.post("/v1/responses", json={"model": "m", "input": "x", "previous_response_id": body["id"]})
    assert gone.status_code == 400
    assert gone.json()["error"]["code"] == "previous_response_not_found"


async def test_deleting_a_middle_response_keeps_the_chain_history_whole(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.reply_json(text_response("A1", msg_id="msg_m1"))
    fake_upstream.reply_json(text_response("A2", msg_id="msg_m2"))
    first = await turn(alice.http, "Q1")
    second = await turn(alice.http, "Q2", previous_response_id=first["id"])
    assert (await alice.http.delete(f"/v1/responses/{first['id']}")).status_code == 200
    assert (await alice.http.get(f"/v1/responses/{first['id']}")).status_code == 404
    await turn(alice.http, "Q3", previous_response_id=second["id"])
    assert fake_upstream.inputs[2] == [
        user("Q1"),
        assistant("A1", "msg_m1"),
        user("Q2"),
        assistant("A2", "msg_m2"),
        user("Q3"),
    ]


async def test_deleting_a_conversation_response_keeps_the_conversation_items(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("A1", msg_id="msg_cv"))
    first = await turn(alice.http, "Q1", conversation=conv)
    assert (await alice.http.delete(f"/v1/responses/{first['id']}")).status_code == 200
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"order": "asc"})).json()["data"]
    assert without_ids(listed) == without_ids(shown(user("Q1"), assistant("A1", "msg_cv")))
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[1] == [user("Q1"), assistant("A1", "msg_cv"), user("Q2")]


async def test_input_items_lists_this_responses_input_with_pagination(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    first = await turn(alice.http, "earlier")
    new_input = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"part {i}"}]} for i in range(5)
    ]
    second = await turn(alice.http, new_input, previous_response_id=first["id"])
    path = f"/v1/responses/{second['id']}/input_items"

    page = (await alice.http.get(path)).json()
    assert page["object"] == "list"
    assert [i["content"][0]["text"] for i in page["data"]] == [f"part {i}" for i in range(4, -1, -1)]
    assert all(i["id"].startswith("msg_") and i["status"] == "completed" for i in page["data"])
    assert page["has_more"] is False
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
    ids = [i["id"] for i in reversed(page["data"])]

    asc = (await alice.http.get(path, params={"order": "asc", "limit": 2})).json()
    assert [i["id"] for i in asc["data"]] == ids[:2] and asc["has_more"] is True
    nxt = (await alice.http.get(path, params={"order": "asc", "limit": 2, "after": asc["last_id"]})).json()
    assert [i["id"] for i in nxt["data"]] == ids[2:4] and nxt["has_more"] is True
    last = (await alice.http.get(path, params={"order": "asc", "limit": 2, "after": nxt["last_id"]})).json()
    assert [i["id"] for i in last["data"]] == ids[4:] and last["has_more"] is False
    desc = (await alice.http.get(path, params={"limit": 3, "after": ids[3]})).json()
    assert [i["id"] for i in desc["data"]] == [ids[2], ids[1], ids[0]] and desc["has_more"] is False

    for params, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order")]:
        bad = await alice.http.get(path, params=params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param
    unknown = await alice.http.get(path, params={"after": "msg_unknown"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after"
    # Another response's item is not a cursor here.
    first_item = (await alice.http.get(f"/v1/responses/{first['id']}/input_items")).json()["data"][0]["id"]
    assert (await alice.http.get(path, params={"after": first_item})).status_code == 400


async def test_input_items_keep_client_ids_and_mint_missing_ones(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    given = [
        {"type": "message", "role": "user", "content": "with id", "id": "msg_client_1"},
        {"type": "message", "role": "user", "content": "without id"},
        {"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c9", "output": [{"type": "input_text", "text": "42"}]},
        {"type": "reasoning", "summary": [], "encrypted_content": "enc"},
    ]
    body = await turn(alice.http, given)
    listed = (await alice.http.get(f"/v1/responses/{body['id']}/input_items", params={"order": "asc"})).json()["data"]
    assert listed[0]["id"] == "msg_client_1"
    assert listed[1]["id"].startswith("msg_") and listed[1]["id"] != "msg_client_1"
    assert listed[2]["id"].startswith("fc_")
    assert listed[3]["id"].startswith("fc")
    assert listed[4]["id"].startswith("rs_")
    assert len({i["id"] for i in listed}) == 5
    sent = fake_upstream.inputs[0]
    # Upstream requires ids on function_call and reasoning items; the minted ones are what we list and replay.
    assert sent[2]["id"] == listed[2]["id"]
    assert sent[4]["id"] == listed[4]["id"]
    assert sent[0] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "with id"}],
        "id": "msg_client_1",
    }


async def test_store_false_relays_and_keeps_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(text_response("A1", msg_id="msg_s1"))
    stored = await turn(alice.http, "Q1")
    fake_upstream.reply_json(text_response("ephemeral", msg_id="msg_eph"))
    body = await turn(alice.http, "Q2", store=False, previous_response_id=stored["id"])
    assert body["store"] is False
    assert body["status"] == "completed"
    assert body["output"] == shown(assistant("ephemeral", "msg_eph"))
    assert fake_upstream.inputs[1] == [user("Q1"), assistant("A1", "msg_s1"), user("Q2")]
    assert fake_upstream.requests[1].body["store"] is False

    assert [r["id"] for r in await rows(db, "SELECT id FROM response")] == [stored["id"]]
    assert len(await rows(db, "SELECT id FROM item")) == 2
    assert (await alice.http.get(f"/v1/responses/{body['id']}")).status_code == 404
    assert (await alice.http.get(f"/v1/responses/{body['id']}/input_items")).status_code == 404
    reuse = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Q3", "previous_response_id": body["id"]}
    )
    assert reuse.status_code == 400
    assert reuse.json()["error"] == {
        "message": f"Previous response with id '{body['id']}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert len(fake_upstream.requests) == 2


async def test_unknown_previous_response_id_is_rejected(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Q", "previous_response_id": "resp_does_not_exist"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "Previous response with id 'resp_does_not_exist' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []


async def test_conversation_and_previous_response_id_together_are_rejected(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    first = await turn(alice.http, "Q")
    for conversation in (conv, {"id": conv}):
        answer = await alice.http.post(
            "/v1/responses",
            json={"model": MODEL, "input": "Q", "conversation": conversation, "previous_response_id": first["id"]},
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert "conversation" in answer.json()["error"]["message"]
    assert len(fake_upstream.requests) == 1
    assert len(await rows(db, "SELECT id FROM response")) == 1


async def test_conversation_given_as_object(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conv = await new_conversation(alice.http)
    body = await turn(alice.http, "Q", conversation={"id": conv})
    assert body["conversation"] == {"id": conv}
    items = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"]
    assert len(items) == 2


async def test_unknown_conversation_is_not_found(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q", "conversation": "conv_nope"})
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "conversation"
    assert answer.json()["error"]["message"] == "Conversation with id 'conv_nope' not found."
    assert fake_upstream.requests == []


async def test_incomplete_response_is_stored_and_appended(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    partial = {**assistant("Cut sh", "msg_inc"), "status": "incomplete"}
    fake_upstream.reply_json(
        response_with_output([partial], status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    )
    conv = await new_conversation(alice.http)
    body = await turn(alice.http, "Long answer please", conversation=conv, max_output_tokens=16)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["completed_at"] is None
    assert body["output"] == shown(partial)
    await turn(alice.http, "continue", conversation=conv)
    assert fake_upstream.inputs[1] == [user("Long answer please"), partial, user("continue")]
    (row,) = await rows(db, "SELECT status, incomplete_details FROM response WHERE id = :r", r=body["id"])
    assert row == {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}


async def test_failed_status_in_a_200_answer_is_stored_and_not_appended(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    error = {"code": "server_error", "message": "Provider returned error"}
    fake_upstream.reply_json(response_with_output([], status="failed", error=error, error_type="provider_unavailable"))
    conv = await new_conversation(alice.http)
    body = await turn(alice.http, "Q", conversation=conv)
    assert body["status"] == "failed"
    assert body["error"] == error
    assert (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"] == []
    inputs = (await alice.http.get(f"/v1/responses/{body['id']}/input_items")).json()["data"]
    assert without_ids(inputs) == [user("Q")]
    await turn(alice.http, "Q again", conversation=conv)
    assert fake_upstream.inputs[1] == [user("Q again")]
    (row,) = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=body["id"])
    assert row == {"status": "failed", "error": error}


async def test_previous_response_must_have_finished_usably(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(response_with_output([], status="failed", error={"code": "server_error", "message": "x"}))
    failed = await turn(alice.http, "Q")
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Q2", "previous_response_id": failed["id"]}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "previous_response_id"
    assert len(fake_upstream.requests) == 1


def _response_keys() -> set[str]:
    return {
        "id",
        "object",
        "created_at",
        "status",
        "error",
        "incomplete_details",
        "instructions",
        "model",
        "output",
        "metadata",
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "temperature",
        "top_p",
        "usage",
        "previous_response_id",
        "conversation",
        "store",
    }


async def test_response_carries_every_field_openai_requires(alice: Tenant) -> None:
    body: dict[str, Any] = await turn(alice.http, "Q")
    assert _response_keys() <= set(body)


async def test_client_assistant_messages_get_the_id_and_status_openrouter_requires(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    given = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "assistant", "content": [{"type": "input_text", "text": "as input part"}], "id": "msg_mine"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    body = await turn(alice.http, given)
    sent = fake_upstream.inputs[0]
    assert sent[1]["id"].startswith("msg_") and sent[1]["status"] == "completed"
    assert sent[1]["content"] == [{"type": "output_text", "text": "Hello, how can I help?", "annotations": []}]
    assert sent[2]["id"] == "msg_mine"
    assert sent[2]["content"] == [{"type": "output_text", "text": "as input part", "annotations": []}]
    listed = (await alice.http.get(f"/v1/responses/{body['id']}/input_items", params={"order": "asc"})).json()["data"]
    assert [item["id"] for item in listed[1:3]] == [sent[1]["id"], "msg_mine"]
    await turn(alice.http, "Another", previous_response_id=body["id"])
    assert fake_upstream.inputs[1][:4] == sent


async def test_a_running_turn_no_client_sees_is_stored_whole_when_it_finishes(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A turn that is neither streamed nor background gives its id to nobody before it ends: while it runs,
    only its claim on the conversation is stored; its finish writes the response row and its input items once,
    at their place in the conversation."""
    conv = await new_conversation(alice.http, items=[{"role": "user", "content": "seed"}])
    fake_upstream.enqueue(Reply(kind="json", body=text_response("late", msg_id="msg_late"), delay=1.0))
    running = asyncio.create_task(turn(alice.http, [user("Q"), user("R")], conversation=conv))
    await fake_upstream.received()
    assert await rows(db, "SELECT id FROM response") == []
    (claim,) = await rows(db, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conv)
    assert claim["turn_response_id"].startswith("resp_")
    assert await rows(db, "SELECT body FROM item WHERE response_id IS NOT NULL OR position > 0") == []
    assert (await alice.http.get(f"/v1/responses/{claim['turn_response_id']}")).status_code == 404
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"]
    assert [item["content"][0]["text"] for item in listed] == ["seed"]
    assert without_ids(fake_upstream.requests[0].body["input"][1:]) == [user("Q"), user("R")]
    busy = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "meanwhile", "conversation": conv})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "conversation_locked"

    finished = await running
    (row,) = await rows(
        db,
        "SELECT id, status, conversation_position, created_at <= completed_at AS ordered FROM response",
    )
    assert row == {"id": claim["turn_response_id"], "status": "completed", "conversation_position": 1, "ordered": True}
    assert finished["id"] == row["id"] and finished["status"] == "completed"
    assert (await alice.http.get(f"/v1/responses/{row['id']}")).json() == finished
    inputs = (await alice.http.get(f"/v1/responses/{row['id']}/input_items", params={"order": "asc"})).json()
    assert without_ids(inputs["data"]) == [user("Q"), user("R")]
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"order": "asc"})).json()["data"]
    assert without_ids(listed[1:]) == without_ids(shown(user("Q"), user("R"), assistant("late", "msg_late")))
    stored = await rows(
        db, "SELECT is_output, ordinal, position FROM item WHERE response_id = :r ORDER BY pk", r=row["id"]
    )
    assert stored == [
        {"is_output": False, "ordinal": 0, "position": 1},
        {"is_output": False, "ordinal": 1, "position": 2},
        {"is_output": True, "ordinal": 0, "position": 3},
    ]
