"""The official openai SDK works against the service with only base_url changed: conversations, items with
auto-pagination, responses with conversation= and previous_response_id=, input_items, errors."""

from __future__ import annotations

import json

import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, response_with_output, text_response
from tests.turn_support import MODEL, assistant, conversation_items, rows, user


async def test_sdk_conversation_lifecycle(alice: Tenant, db: AsyncEngine) -> None:
    client = alice.openai()
    conv = await client.conversations.create(
        metadata={"topic": "sdk"}, items=[{"type": "message", "role": "user", "content": "Hello!"}]
    )
    assert conv.id.startswith("conv_")
    assert conv.object == "conversation"
    assert conv.metadata == {"topic": "sdk"}

    got = await client.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.created_at == conv.created_at

    updated = await client.conversations.update(conv.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}

    deleted = await client.conversations.delete(conv.id)
    assert deleted.id == conv.id and deleted.deleted is True and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.conversations.retrieve(conv.id)
    assert caught.value.status_code == 404
    assert await rows_count(db, "conversation") == 0


async def rows_count(db: AsyncEngine, table: str) -> int:
    (row,) = await rows(db, f"SELECT count(*) AS n FROM {table}")
    count: int = row["n"]
    return count


async def test_sdk_items_create_list_retrieve_delete_with_auto_pagination(alice: Tenant, db: AsyncEngine) -> None:
    client = alice.openai()
    conv = await client.conversations.create()
    created = await client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": f"m{i}"} for i in range(7)]
    )
    assert len(created.data) == 7
    assert created.first_id == created.data[0].id and created.last_id == created.data[-1].id
    ids = [item.id for item in created.data]

    seen = [item.id async for item in client.conversations.items.list(conv.id, limit=2, order="asc")]
    assert seen == ids
    newest_first = [item.id async for item in client.conversations.items.list(conv.id, limit=3)]
    assert newest_first == ids[::-1]
    page = await client.conversations.items.list(conv.id, limit=3, order="asc")
    assert [i.id for i in page.data] == ids[:3] and page.has_more is True

    item = await client.conversations.items.retrieve(ids[2], conversation_id=conv.id)
    assert item.type == "message"
    assert item.id == ids[2]
    assert item.content[0].type == "input_text"
    assert item.content[0].text == "m2"  # type: ignore[union-attr]

    after_delete = await client.conversations.items.delete(ids[2], conversation_id=conv.id)
    assert after_delete.id == conv.id and after_delete.object == "conversation"
    remaining = [i.id async for i in client.conversations.items.list(conv.id, order="asc")]
    assert remaining == ids[:2] + ids[3:]
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(ids[2], conversation_id=conv.id)
    assert [r["id"] for r in await conversation_items(db, conv.id)] == remaining


async def test_sdk_deletes_every_item_while_auto_paginating(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A client emptying a conversation as it goes through it: the SDK asks for the next page after the last
    item of the page it was given, which the loop has just deleted. That page was a 400 (param `after`), and
    the loop stopped with the rest of the items still there."""
    client = alice.openai()
    for order in ("asc", "desc"):
        conv = await client.conversations.create(
            items=[{"type": "message", "role": "user", "content": f"m{i}"} for i in range(7)]
        )
        # Items a turn carried are taken out of the conversation but kept with their response.
        fake_upstream.reply_json(text_response("Answer.", msg_id=f"msg_{order}"))
        await client.responses.create(model=MODEL, input="Q", conversation=conv.id)
        ids = [item.id async for item in client.conversations.items.list(conv.id, order="asc")]
        assert len(ids) == 9
        deleted = []
        async for item in client.conversations.items.list(conv.id, limit=2, order=order):
            await client.conversations.items.delete(item.id, conversation_id=conv.id)
            deleted.append(item.id)
        assert deleted == (ids if order == "asc" else ids[::-1])
        assert await conversation_items(db, conv.id) == []
        assert [i async for i in client.conversations.items.list(conv.id)] == []
    other = await client.conversations.create(items=[{"type": "message", "role": "user", "content": "x"}])
    # A deleted item's position holds in its own conversation only.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.list(other.id, after=ids[0])
    assert caught.value.body["param"] == "after"  # type: ignore[index]


async def test_sdk_deleting_while_paginating_past_an_item_deleted_and_added_back(
    alice: Tenant, db: AsyncEngine
) -> None:
    """An item deleted and added back under its id (an edit) stands at the end; deleted again, a cursor naming it
    went on from where it stood the first time, so a loop deleting as it paged newest first skipped the items
    between its two places and left them there."""
    client = alice.openai()
    conv = await client.conversations.create(
        items=[{"type": "message", "role": "user", "content": f"m{i}"} for i in range(10)]
    )
    edited = [item.id async for item in client.conversations.items.list(conv.id, order="asc")][3]
    await client.conversations.items.delete(edited, conversation_id=conv.id)
    await client.conversations.items.create(
        conv.id, items=[{"type": "message", "id": edited, "role": "user", "content": "m3 edited"}]
    )
    await client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": f"n{i}"} for i in range(10)]
    )
    deleted = []
    async for item in client.conversations.items.list(conv.id, limit=11, order="desc"):
        await client.conversations.items.delete(item.id, conversation_id=conv.id)
        deleted.append(item.id)
    assert len(deleted) == 20
    assert await conversation_items(db, conv.id) == []


async def test_sdk_turns_through_a_conversation(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    conv = await client.conversations.create()
    fake_upstream.reply_json(text_response("Paris.", msg_id="msg_sdk1"))
    fake_upstream.reply_json(text_response("Madrid.", msg_id="msg_sdk2"))
    first = await client.responses.create(model=MODEL, input="Capital of France?", conversation=conv.id)
    second = await client.responses.create(model=MODEL, input="And Spain?", conversation={"id": conv.id})
    assert first.output_text == "Paris."
    assert second.output_text == "Madrid."
    assert second.conversation is not None and second.conversation.id == conv.id
    assert second.usage is not None and second.usage.total_tokens == 15
    assert fake_upstream.inputs[1] == [user("Capital of France?"), assistant("Paris.", "msg_sdk1"), user("And Spain?")]

    items = [item async for item in client.conversations.items.list(conv.id, order="asc")]
    assert [item.type for item in items] == ["message"] * 4
    assert [getattr(item, "role", None) for item in items] == ["user", "assistant", "user", "assistant"]
    assert items[1].id == "msg_sdk1"


async def test_sdk_previous_response_chain_retrieve_delete_and_input_items(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    client = alice.openai()
    fake_upstream.reply_json(text_response("One.", msg_id="msg_ch1"))
    fake_upstream.reply_json(text_response("Two.", msg_id="msg_ch2"))
    first = await client.responses.create(model=MODEL, input="Q1", instructions="Be brief.", metadata={"n": "1"})
    second = await client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"role": "user", "content": f"part {i}"} for i in range(5)],
    )
    assert second.previous_response_id == first.id
    assert second.instructions is None
    sent = fake_upstream.requests[1].body
    assert "instructions" not in sent
    assert sent["input"][:2] == [user("Q1"), assistant("One.", "msg_ch1")]
    assert [m["content"][0]["text"] for m in sent["input"][2:]] == [f"part {i}" for i in range(5)]

    got = await client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == "Two." and got.status == "completed"
    assert (await client.responses.retrieve(first.id)).metadata == {"n": "1"}

    listed = [item async for item in client.responses.input_items.list(second.id, limit=2, order="asc")]
    assert [item.content[0].text for item in listed] == [f"part {i}" for i in range(5)]  # type: ignore[union-attr]
    newest_first = [item.id async for item in client.responses.input_items.list(second.id, limit=2)]
    assert newest_first == [item.id for item in reversed(listed)]

    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)


async def test_sdk_tool_call_round_trip(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    call = {
        "type": "function_call",
        "id": "fc_sdk",
        "call_id": "call_sdk",
        "name": "add",
        "arguments": '{"a":1,"b":2}',
        "status": "completed",
    }
    fake_upstream.reply_json(response_with_output([call]))
    fake_upstream.reply_json(text_response("3", msg_id="msg_sum"))
    tools = [
        {
            "type": "function",
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
            "strict": False,
        }
    ]
    first = await client.responses.create(model=MODEL, input="1+2?", tools=tools)  # type: ignore[arg-type]
    (output,) = first.output
    assert output.type == "function_call"
    assert json.loads(output.arguments) == {"a": 1, "b": 2}
    second = await client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": output.call_id, "output": "3"}],
        tools=tools,  # type: ignore[arg-type]
    )
    assert second.output_text == "3"
    assert fake_upstream.inputs[1] == [
        user("1+2?"),
        call,
        {"type": "function_call_output", "call_id": "call_sdk", "output": "3"},
    ]


async def test_sdk_errors_carry_openai_codes(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="x", conversation="conv_missing")
    fake_upstream.reply_json({"error": {"code": 502, "message": "Provider down"}}, status=502)
    fake_upstream.reply_json({"error": {"code": 502, "message": "Provider down"}}, status=502)
    fake_upstream.reply_json({"error": {"code": 502, "message": "Provider down"}}, status=502)
    with pytest.raises(openai.InternalServerError) as server_error:
        await client.responses.create(model=MODEL, input="x")
    assert server_error.value.status_code == 502
    assert server_error.value.code == "upstream_error"
    async with openai.AsyncOpenAI(api_key="sk-nope", base_url=alice.base_url + "/v1", max_retries=0) as bad_key:
        with pytest.raises(openai.AuthenticationError):
            await bad_key.conversations.create()


async def test_sdk_three_turn_conversation_chain_and_branch(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    conv = await client.conversations.create()
    for n in range(1, 4):
        fake_upstream.reply_json(text_response(f"conv {n}", msg_id=f"msg_sc{n}"))
        await client.responses.create(model=MODEL, input=f"cq{n}", conversation=conv.id)
    assert fake_upstream.inputs[2] == [
        user("cq1"),
        assistant("conv 1", "msg_sc1"),
        user("cq2"),
        assistant("conv 2", "msg_sc2"),
        user("cq3"),
    ]

    chain = []
    previous = None
    for n in range(1, 4):
        fake_upstream.reply_json(text_response(f"chain {n}", msg_id=f"msg_sp{n}"))
        response = await client.responses.create(
            model=MODEL, input=f"pq{n}", **({"previous_response_id": previous} if previous else {})
        )
        chain.append(response)
        previous = response.id
    assert fake_upstream.inputs[5] == [
        user("pq1"),
        assistant("chain 1", "msg_sp1"),
        user("pq2"),
        assistant("chain 2", "msg_sp2"),
        user("pq3"),
    ]
    fake_upstream.reply_json(text_response("branch", msg_id="msg_sb"))
    branch = await client.responses.create(model=MODEL, input="branch q", previous_response_id=chain[0].id)
    assert branch.output_text == "branch"
    assert fake_upstream.inputs[6] == [user("pq1"), assistant("chain 1", "msg_sp1"), user("branch q")]


async def test_sdk_reasoning_item_replayed_byte_exact(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    client = alice.openai()
    reasoning = {
        "type": "reasoning",
        "id": "rs_sdk",
        "summary": [{"type": "summary_text", "text": "Considering \U0001f9e0"}],
        "encrypted_content": "gAAAAB" + "x+/=" * 100,
        "signature": "sig+/==",
        "format": "openai-responses-v1",
        "status": "completed",
    }
    fake_upstream.reply_json(response_with_output([reasoning, assistant("42", "msg_sdk_r")]))
    first = await client.responses.create(model=MODEL, input="Think", include=["reasoning.encrypted_content"])
    (item, _) = first.output
    assert item.type == "reasoning"
    assert item.encrypted_content == reasoning["encrypted_content"]
    await client.responses.create(model=MODEL, input="Again", previous_response_id=first.id)
    (stored,) = await rows(db, "SELECT body FROM item WHERE id = 'rs_sdk'")
    assert stored["body"].encode() in fake_upstream.requests[1].raw
    assert fake_upstream.inputs[1][1] == reasoning
    assert fake_upstream.requests[0].body["include"] == ["reasoning.encrypted_content"]


async def test_sdk_client_side_history_with_store_false(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """The stateless pattern: the client feeds the previous output back as input itself."""
    client = alice.openai()
    reasoning = {
        "type": "reasoning",
        "id": "rs_cs",
        "summary": [],
        "encrypted_content": "enc",
        "status": "completed",
    }
    fake_upstream.reply_json(response_with_output([reasoning, assistant("Hi.", "msg_cs")]))
    first = await client.responses.create(model=MODEL, input="Hello", store=False)
    history: list[object] = [{"role": "user", "content": "Hello"}, *first.output, {"role": "user", "content": "Bye"}]
    await client.responses.create(model=MODEL, input=history, store=False)  # type: ignore[arg-type]
    sent = fake_upstream.inputs[1]
    assert sent[1]["id"] == "rs_cs" and sent[1]["encrypted_content"] == "enc"
    assert sent[2]["id"] == "msg_cs" and sent[2]["status"] == "completed"
    assert sent[2]["content"][0]["text"] == "Hi."


NUL_AND_ASTRAL = "nul\u0000here \U0001f600\U0001f3f3\ufe0f\u200d\U0001f308 \U0001d11e end"


async def test_sdk_nul_and_astral_round_trip(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    conv = await client.conversations.create(items=[{"type": "message", "role": "user", "content": NUL_AND_ASTRAL}])
    fake_upstream.reply_json(text_response("echo " + NUL_AND_ASTRAL, msg_id="msg_sdk_nul"))
    first = await client.responses.create(model=MODEL, input=NUL_AND_ASTRAL, conversation=conv.id)
    assert first.output_text == "echo " + NUL_AND_ASTRAL
    await client.responses.create(model=MODEL, input="next", conversation=conv.id)
    assert fake_upstream.inputs[1] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": NUL_AND_ASTRAL}]},
        user(NUL_AND_ASTRAL),
        assistant("echo " + NUL_AND_ASTRAL, "msg_sdk_nul"),
        user("next"),
    ]
    texts = [
        item.content[0].text  # type: ignore[union-attr]
        async for item in client.conversations.items.list(conv.id, order="asc")
    ]
    assert texts[:3] == [NUL_AND_ASTRAL, NUL_AND_ASTRAL, "echo " + NUL_AND_ASTRAL]
    assert (await client.responses.retrieve(first.id)).output_text == "echo " + NUL_AND_ASTRAL


async def test_sdk_upstream_4xx_is_a_bad_request_and_the_turn_is_kept(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    client = alice.openai()
    conv = await client.conversations.create()
    fake_upstream.reply_json({"error": {"code": 400, "message": "Context too long"}}, status=400)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, input="huge", conversation=conv.id)
    assert "Context too long" in caught.value.message
    assert [item async for item in client.conversations.items.list(conv.id)] == []
    fake_upstream.reply_json({"error": {"code": 402, "message": "Insufficient credits"}}, status=402)
    with pytest.raises(openai.APIStatusError) as payment:
        await client.responses.create(model=MODEL, input="again", conversation=conv.id)
    assert payment.value.status_code == 402
    await client.responses.create(model=MODEL, input="fine", conversation=conv.id)
    assert fake_upstream.inputs[2] == [user("fine")]


async def test_the_sdk_does_not_retry_an_upstream_failure_the_service_already_retried(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """OpenAI's SDK retries a 5xx twice by default: after the service's own three tries, that made nine upstream
    calls for one failure. The service's 502 says not to (`x-should-retry: false`), which the SDK honours."""
    failure = {"error": {"code": 503, "message": "No provider available", "metadata": None}}
    for _ in range(9):
        fake_upstream.reply_json(failure, status=503)
    client = alice.openai(max_retries=2)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model=MODEL, input="hi")
    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake_upstream.requests) == 3


async def test_the_sdk_still_retries_an_upstream_failure_the_service_tried_once(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A gateway's 504 is not among the statuses the service retries: its 502 leaves the retry to the client."""
    fake_upstream.reply_json({"error": {"code": 504, "message": "gateway timeout", "metadata": None}}, status=504)
    fake_upstream.reply_json(text_response("Second time lucky.", msg_id="msg_lucky"))
    client = alice.openai(max_retries=2)
    answer = await client.responses.create(model=MODEL, input="hi")
    assert answer.output_text == "Second time lucky."
    assert len(fake_upstream.requests) == 2
