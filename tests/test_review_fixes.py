"""Shapes and refusals found by reading the service as a client written to OpenAI's spec would use it: a running
response cannot be deleted from under its turn, a store=false response shows when it completed, an input image
without `detail` is shown with OpenAI's default, and a response stored before its parameters were checked still
renders."""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.openai_spec import check
from tests.stream_support import conversation_state, output_text, wait_until_ended
from tests.turn_support import MODEL, new_conversation, rows, turn

TEXT = "An answer that takes a while to arrive, word after word."


async def test_a_running_response_cannot_be_deleted_and_its_conversation_goes_on(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=20), delay=0.05))
    started = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "conversation": conv}
    )
    response_id = started.json()["id"]

    refused = await alice.http.delete(f"/v1/responses/{response_id}")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("response_in_progress", "invalid_request_error")
    assert response_id in error["message"]
    assert await rows(db, "SELECT id FROM response WHERE id = :r", r=response_id) == [{"id": response_id}]

    final = await wait_until_ended(alice.http, response_id)
    assert (final["status"], output_text(final)) == ("completed", TEXT)
    state = await conversation_state(db, conv)
    assert len(state["items"]) == 2 and state["turn_response_id"] is None
    # Once ended it can be deleted; its items stay in the conversation, which takes its next turn.
    deleted = await alice.http.delete(f"/v1/responses/{response_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    await turn(alice.http, "next", conversation=conv)
    assert len((await conversation_state(db, conv))["items"]) == 4


async def test_a_running_chain_turn_cannot_be_deleted_either(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    root = await turn(alice.http, "root")
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=20), delay=0.05))
    started = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "previous_response_id": root["id"]}
    )
    response_id = started.json()["id"]
    refused = await alice.http.delete(f"/v1/responses/{response_id}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "response_in_progress", refused.text
    final = await wait_until_ended(alice.http, response_id)
    assert (final["status"], output_text(final)) == ("completed", TEXT)
    assert (await alice.http.delete(f"/v1/responses/{response_id}")).status_code == 200
    assert await rows(db, "SELECT id FROM response WHERE id = :r", r=response_id) == []


async def test_a_store_false_response_shows_its_completion_time(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    plain = await turn(alice.http, "hi", store=False)
    assert plain["status"] == "completed"
    assert isinstance(plain["completed_at"], int) and plain["completed_at"] >= plain["created_at"]
    check("Response", plain)

    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=3)))
    async with alice.http.stream(
        "POST", "/v1/responses", json={"model": MODEL, "input": "hi", "store": False, "stream": True}
    ) as answer:
        body = await answer.aread()
    completed = [line for line in body.decode().splitlines() if '"type":"response.completed"' in line]
    assert len(completed) == 1 and '"completed_at":null' not in completed[0], completed
    assert await rows(db, "SELECT id FROM response") == []


async def test_an_input_image_without_detail_is_shown_with_openais_default(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    image = {"type": "input_image", "image_url": "https://example.test/cat.png"}
    message = {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, image]}
    conv = await new_conversation(alice.http, items=[message])
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()
    assert listed["data"][0]["content"][1] == {**image, "detail": "auto"}
    check("ConversationItemList", listed)

    answer = await turn(alice.http, [message])
    inputs = (await alice.http.get(f"/v1/responses/{answer['id']}/input_items")).json()
    assert inputs["data"][0]["content"][1] == {**image, "detail": "auto"}
    check("ResponseItemList", inputs)
    # Stored and sent upstream with it too: OpenRouter's schema requires a detail, OpenAI's examples leave it out.
    assert fake_upstream.inputs[0][0]["content"][1] == {**image, "detail": "auto"}
    [stored] = await rows(db, "SELECT body FROM item WHERE conversation_id = :c", c=conv)
    assert json.loads(stored["body"])["content"][1] == {**image, "detail": "auto"}


async def test_a_response_stored_before_its_tools_were_checked_still_renders(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    stored = await turn(alice.http, "hi")
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE response SET params_json = :p WHERE id = :r"),
            {"p": json.dumps({"model": MODEL, "tools": 5}), "r": stored["id"]},
        )
    answer = await alice.http.get(f"/v1/responses/{stored['id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["tools"] == []
