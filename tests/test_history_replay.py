"""Exact history replay: what OpenRouter receives on each turn is every earlier item exactly as stored, then the
new input; nothing duplicated, reordered or dropped."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, response_with_output, text_response
from tests.turn_support import (
    MODEL,
    assistant,
    conversation_items,
    list_all,
    new_conversation,
    rows,
    shown,
    turn,
    user,
)


async def test_three_turn_conversation_sends_exact_history_each_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    replies = [("One.", "msg_up_1"), ("Two.", "msg_up_2"), ("Three.", "msg_up_3")]
    for answer, msg_id in replies:
        fake_upstream.reply_json(text_response(answer, msg_id=msg_id))
    responses = [await turn(alice.http, question, conversation=conv) for question in ("Q1", "Q2", "Q3")]

    assert fake_upstream.inputs == [
        [user("Q1")],
        [user("Q1"), assistant("One.", "msg_up_1"), user("Q2")],
        [user("Q1"), assistant("One.", "msg_up_1"), user("Q2"), assistant("Two.", "msg_up_2"), user("Q3")],
    ]
    for request in fake_upstream.requests:
        assert request.body["store"] is False
        assert "previous_response_id" not in request.body
        assert "conversation" not in request.body
        assert request.body["model"] == MODEL

    stored = await conversation_items(db, conv)
    assert [(r["position"], r["response_id"], r["is_output"]) for r in stored] == [
        (0, responses[0]["id"], False),
        (1, responses[0]["id"], True),
        (2, responses[1]["id"], False),
        (3, responses[1]["id"], True),
        (4, responses[2]["id"], False),
        (5, responses[2]["id"], True),
    ]
    assert [json.loads(r["body"]) for r in stored] == fake_upstream.inputs[2] + [assistant("Three.", "msg_up_3")]
    listed = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    assert [item["id"] for item in listed] == [r["id"] for r in stored]
    assert [item["id"] for item in listed if item["role"] == "assistant"] == ["msg_up_1", "msg_up_2", "msg_up_3"]
    for response in responses:
        assert response["conversation"] == {"id": conv}
        assert response["status"] == "completed"


async def test_three_turn_previous_response_chain_sends_exact_history(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(text_response("One.", msg_id="msg_c1"))
    fake_upstream.reply_json(text_response("Two.", msg_id="msg_c2"))
    fake_upstream.reply_json(text_response("Three.", msg_id="msg_c3"))
    first = await turn(alice.http, "Q1")
    second = await turn(alice.http, "Q2", previous_response_id=first["id"])
    third = await turn(alice.http, "Q3", previous_response_id=second["id"])

    assert fake_upstream.inputs == [
        [user("Q1")],
        [user("Q1"), assistant("One.", "msg_c1"), user("Q2")],
        [user("Q1"), assistant("One.", "msg_c1"), user("Q2"), assistant("Two.", "msg_c2"), user("Q3")],
    ]
    for request in fake_upstream.requests:
        assert "previous_response_id" not in request.body
        assert request.body["store"] is False
    assert second["previous_response_id"] == first["id"]
    assert third["previous_response_id"] == second["id"]
    stored = await rows(db, "SELECT id, previous_response_id FROM response ORDER BY created_at, id")
    assert {(r["id"], r["previous_response_id"]) for r in stored} == {
        (first["id"], None),
        (second["id"], first["id"]),
        (third["id"], second["id"]),
    }
    assert await rows(db, "SELECT count(*) AS n FROM item WHERE conversation_id IS NOT NULL") == [{"n": 0}]


async def test_branch_from_first_turn_sends_exactly_that_branch(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    for answer, msg_id in [("A1", "msg_a1"), ("A2", "msg_a2"), ("A3", "msg_a3"), ("B2", "msg_b2"), ("B3", "msg_b3")]:
        fake_upstream.reply_json(text_response(answer, msg_id=msg_id))
    first = await turn(alice.http, "Q1")
    second = await turn(alice.http, "Q2", previous_response_id=first["id"])
    await turn(alice.http, "Q3", previous_response_id=second["id"])
    branch = await turn(alice.http, "Other Q2", previous_response_id=first["id"])
    await turn(alice.http, "Other Q3", previous_response_id=branch["id"])

    assert fake_upstream.inputs[3] == [user("Q1"), assistant("A1", "msg_a1"), user("Other Q2")]
    assert fake_upstream.inputs[4] == [
        user("Q1"),
        assistant("A1", "msg_a1"),
        user("Other Q2"),
        assistant("B2", "msg_b2"),
        user("Other Q3"),
    ]


async def test_branch_from_a_conversation_turn_excludes_later_conversation_items(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http, items=[{"role": "developer", "content": "Be kind."}])
    fake_upstream.reply_json(text_response("A1", msg_id="msg_k1"))
    fake_upstream.reply_json(text_response("A2", msg_id="msg_k2"))
    first = await turn(alice.http, "Q1", conversation=conv)
    await turn(alice.http, "Q2", conversation=conv)
    fake_upstream.reply_json(text_response("Fork", msg_id="msg_fork"))
    fork = await turn(alice.http, "Fork Q", previous_response_id=first["id"])

    developer = {"role": "developer", "content": [{"type": "input_text", "text": "Be kind."}], "type": "message"}
    assert fake_upstream.inputs[2] == [developer, user("Q1"), assistant("A1", "msg_k1"), user("Fork Q")]
    assert fork["conversation"] is None
    # The fork is not part of the conversation.
    assert len(await conversation_items(db, conv)) == 5


async def test_nth_turn_sends_exactly_the_earlier_turns_plus_new_input(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conv = await new_conversation(alice.http)
    previous_id = None
    expected_conv: list[dict[str, Any]] = []
    expected_chain: list[dict[str, Any]] = []
    for n in range(1, 7):
        new_input = [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"turn {n} a"}]},
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": f"turn {n} b"}]},
        ][: 1 + n % 2]
        fake_upstream.reply_json(text_response(f"conv answer {n}", msg_id=f"msg_conv_{n}"))
        await turn(alice.http, new_input, conversation=conv)
        assert fake_upstream.inputs[-1] == expected_conv + new_input, f"conversation turn {n}"
        expected_conv += [*new_input, assistant(f"conv answer {n}", f"msg_conv_{n}")]

        fake_upstream.reply_json(text_response(f"chain answer {n}", msg_id=f"msg_chain_{n}"))
        response = await turn(alice.http, new_input, previous_response_id=previous_id)
        assert fake_upstream.inputs[-1] == expected_chain + new_input, f"chain turn {n}"
        expected_chain += [*new_input, assistant(f"chain answer {n}", f"msg_chain_{n}")]
        previous_id = response["id"]
    listed = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    assert [{k: v for k, v in item.items() if k != "id" or item["role"] == "assistant"} for item in listed] == [
        *shown(*(item if item["role"] == "assistant" else {**item, "status": "completed"} for item in expected_conv))
    ]


async def test_instructions_apply_to_their_turn_only(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("A1", msg_id="msg_i1"))
    first = await turn(alice.http, "Q1", conversation=conv, instructions="Answer in French.")
    await turn(alice.http, "Q2", conversation=conv)
    chained = await turn(alice.http, "Q3", previous_response_id=first["id"], instructions="Answer in German.")

    assert fake_upstream.requests[0].body["instructions"] == "Answer in French."
    assert "instructions" not in fake_upstream.requests[1].body
    assert fake_upstream.requests[2].body["instructions"] == "Answer in German."
    assert fake_upstream.inputs[2] == [user("Q1"), assistant("A1", "msg_i1"), user("Q3")]
    assert first["instructions"] == "Answer in French."
    assert chained["instructions"] == "Answer in German."
    assert (await alice.http.get(f"/v1/responses/{first['id']}")).json()["instructions"] == "Answer in French."


async def test_tool_call_round_trip_replays_function_call_and_output(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": True,
        }
    ]
    call = {
        "type": "function_call",
        "id": "fc_up_1",
        "call_id": "call_abc",
        "name": "get_weather",
        "arguments": '{"city":"Zürich"}',
        "status": "completed",
    }
    fake_upstream.reply_json(response_with_output([call]))
    fake_upstream.reply_json(text_response("It is 21 °C.", msg_id="msg_w"))
    conv = await new_conversation(alice.http)
    first = await turn(alice.http, "Weather in Zürich?", conversation=conv, tools=tools, tool_choice="auto")
    assert first["output"] == [call]
    tool_output = {"type": "function_call_output", "call_id": "call_abc", "output": '{"temp_c":21}'}
    second = await turn(alice.http, [tool_output], conversation=conv, tools=tools)

    assert fake_upstream.requests[0].body["tools"] == tools
    assert fake_upstream.requests[0].body["tool_choice"] == "auto"
    assert fake_upstream.inputs[1] == [user("Weather in Zürich?"), call, tool_output]
    assert second["output"] == shown(assistant("It is 21 °C.", "msg_w"))

    stored = await conversation_items(db, conv)
    assert [(r["type"], r["is_output"]) for r in stored] == [
        ("message", False),
        ("function_call", True),
        ("function_call_output", False),
        ("message", True),
    ]
    assert stored[1]["id"] == "fc_up_1"
    assert stored[2]["id"].startswith("fc")
    listed = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    assert listed[2] == {"id": stored[2]["id"], **tool_output, "status": "completed"}

    # The same round trip through previous_response_id (a call of its own: an id the tenant holds already would
    # be replaced, tests/test_duplicate_item_ids.py).
    chained_call = {**call, "id": "fc_up_2"}
    fake_upstream.reply_json(response_with_output([chained_call]))
    fake_upstream.reply_json(text_response("Sunny.", msg_id="msg_w2"))
    chained_first = await turn(alice.http, "Weather?", tools=tools)
    await turn(alice.http, [tool_output], previous_response_id=chained_first["id"], tools=tools)
    assert fake_upstream.inputs[3] == [user("Weather?"), chained_call, tool_output]


REASONING = {
    "type": "reasoning",
    "id": "rs_up_1",
    "summary": [{"type": "summary_text", "text": 'Thinking about \u00e9t\u00e9 \U0001f914 and \\ escapes "quoted"'}],
    "encrypted_content": "gAAAAABo+/=" + "QUJD/+=" * 300 + "\u0000tail",
    "signature": "EqQBCkYIBxgCKkBsig+/==",
    "format": "anthropic-claude-v1",
    "status": "completed",
    "content": [{"type": "reasoning_text", "text": "step 1\nstep 2\t\u2028"}],
    "vendor_extra": {"nested": [1, 2.5, None, True, "x"]},
}


async def test_reasoning_item_is_stored_and_replayed_byte_exact(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    message = assistant("Answer.", "msg_r1")
    fake_upstream.reply_json(response_with_output([REASONING, message]))
    conv = await new_conversation(alice.http)
    first = await turn(alice.http, "Think hard", conversation=conv, reasoning={"effort": "high"})
    assert first["output"] == shown(REASONING, message)
    await turn(alice.http, "Next", conversation=conv)

    assert fake_upstream.requests[0].body["reasoning"] == {"effort": "high"}
    assert fake_upstream.inputs[1] == [user("Think hard"), REASONING, message, user("Next")]
    (stored,) = await rows(db, "SELECT body FROM item WHERE id = 'rs_up_1'")
    assert json.loads(stored["body"]) == REASONING
    # The stored text itself, byte for byte, is what went upstream.
    assert stored["body"].encode() in fake_upstream.requests[1].raw

    fake_upstream.reply_json(text_response("Again.", msg_id="msg_r3"))
    await turn(alice.http, "Chained", previous_response_id=first["id"])
    assert stored["body"].encode() in fake_upstream.requests[2].raw
    assert fake_upstream.inputs[2] == [user("Think hard"), REASONING, message, user("Chained")]


async def test_unknown_output_item_types_and_fields_are_kept(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    search = {
        "type": "web_search_call",
        "id": "ws_up_1",
        "status": "completed",
        "action": {"type": "search", "query": "news", "sources": [{"url": "https://example.test"}]},
        "openrouter_extra": {"k": [1, 2, 3]},
    }
    future = {"type": "hologram_call", "id": "holo_1", "status": "completed", "payload": {"x": 1}}
    message = {
        **assistant("See sources.", "msg_u1"),
        "phase": "final_answer",
        "content": [
            {
                "type": "output_text",
                "text": "See sources.",
                "annotations": [
                    {"type": "url_citation", "url": "https://example.test", "start_index": 0, "end_index": 3}
                ],
                "logprobs": [],
            }
        ],
    }
    fake_upstream.reply_json(response_with_output([search, future, message]))
    first = await turn(alice.http, "Search")
    # Shown with the citation's title OpenAI's schema requires (empty); stored and replayed as received.
    (part,) = message["content"]
    shown_message = {**message, "content": [{**part, "annotations": [{**part["annotations"][0], "title": ""}]}]}
    assert first["output"] == [search, future, shown_message]
    assert (await alice.http.get(f"/v1/responses/{first['id']}")).json()["output"] == [search, future, shown_message]
    await turn(alice.http, "More", previous_response_id=first["id"])
    assert fake_upstream.inputs[1] == [user("Search"), search, future, message, user("More")]
    stored = await rows(
        db, "SELECT id, type FROM item WHERE response_id = :r AND is_output ORDER BY ordinal", r=first["id"]
    )
    assert [(r["id"], r["type"]) for r in stored] == [
        ("ws_up_1", "web_search_call"),
        ("holo_1", "hologram_call"),
        ("msg_u1", "message"),
    ]


async def test_output_item_without_id_gets_one_and_replays_with_it(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    bare = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "x", "annotations": []}],
    }
    fake_upstream.reply_json(response_with_output([bare]))
    first = await turn(alice.http, "Q")
    (output,) = first["output"]
    assert output["id"].startswith("msg_")
    assert output["status"] == "completed"
    await turn(alice.http, "Q2", previous_response_id=first["id"])
    assert shown(fake_upstream.inputs[1][1]) == [output]


NUL_TEXT = "before\u0000after \U0001f600 \U0001d11e \U0010ffff \u2028 caf\u00e9 \u202e"


async def test_nul_and_astral_text_round_trips_through_api_and_upstream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http, items=[{"role": "user", "content": NUL_TEXT + " (seed)"}])
    fake_upstream.reply_json(text_response("reply " + NUL_TEXT, msg_id="msg_nul"))
    first = await turn(alice.http, NUL_TEXT, conversation=conv, instructions="instr " + NUL_TEXT)
    assert first["output"][0]["content"][0]["text"] == "reply " + NUL_TEXT
    assert first["instructions"] == "instr " + NUL_TEXT
    assert fake_upstream.requests[0].body["instructions"] == "instr " + NUL_TEXT
    assert fake_upstream.inputs[0][-1] == user(NUL_TEXT)

    await turn(alice.http, "next", conversation=conv)
    seed = {"role": "user", "content": [{"type": "input_text", "text": NUL_TEXT + " (seed)"}], "type": "message"}
    assert fake_upstream.inputs[1] == [seed, user(NUL_TEXT), assistant("reply " + NUL_TEXT, "msg_nul"), user("next")]
    for stored in await conversation_items(db, conv):
        assert stored["body"].encode() in fake_upstream.requests[1].raw or stored["position"] >= 3

    listed = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    assert listed[0]["content"][0]["text"] == NUL_TEXT + " (seed)"
    assert listed[1]["content"][0]["text"] == NUL_TEXT
    assert listed[2]["content"][0]["text"] == "reply " + NUL_TEXT
    again = (await alice.http.get(f"/v1/responses/{first['id']}")).json()
    assert again["output"][0]["content"][0]["text"] == "reply " + NUL_TEXT
    assert again["instructions"] == "instr " + NUL_TEXT
    inputs = (await alice.http.get(f"/v1/responses/{first['id']}/input_items")).json()["data"]
    assert inputs[0]["content"][0]["text"] == NUL_TEXT


async def test_lone_surrogate_from_upstream_is_stored_as_replacement_character(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    # json.dumps writes the lone surrogate as the escape \ud800, which is what a broken upstream would send.
    fake_upstream.reply_json(text_response("bad \ud800 half", msg_id="msg_sur"))
    first = await turn(alice.http, "Q")
    assert first["output"][0]["content"][0]["text"] == "bad \ufffd half"
    await turn(alice.http, "Q2", previous_response_id=first["id"])
    assert fake_upstream.inputs[1][1]["content"][0]["text"] == "bad \ufffd half"


async def test_generation_parameters_pass_through_and_state_fields_do_not(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    params: dict[str, Any] = {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_output_tokens": 321,
        "reasoning": {"effort": "low", "summary": "auto"},
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "truncation": "auto",
        "user": "user-123",
        "models": ["openai/gpt-4o", "anthropic/claude-3.5-sonnet"],
        "provider": {"order": ["openai"], "allow_fallbacks": False, "data_collection": "deny"},
        "plugins": [{"id": "web", "max_results": 3}],
        "include": ["reasoning.encrypted_content"],
        "top_logprobs": 2,
        "session_id": "sess-1",
        "service_tier": "auto",
        "prompt_cache_key": "pck",
        "safety_identifier": "sid",
        "max_tool_calls": 4,
        "prompt": {"id": "pmpt_1", "version": "2", "variables": {"city": "Paris"}},
    }
    first = await turn(alice.http, "Q", metadata={"k": "v"}, instructions="I", store=True, **params)
    sent = fake_upstream.requests[0].body
    assert sent == {
        **params,
        "model": MODEL,
        "instructions": "I",
        "store": False,
        "stream": False,
        "input": [user("Q")],
    }
    echoed = (
        "temperature",
        "top_p",
        "max_output_tokens",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "user",
        "prompt",
    )
    for name in echoed:
        assert first[name] == params[name], name
    assert first["metadata"] == {"k": "v"}


async def test_history_replays_exactly_what_is_stored_after_an_item_is_deleted(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("A1", msg_id="msg_d1"))
    await turn(alice.http, "Q1", conversation=conv)
    items = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    deleted = await alice.http.delete(f"/v1/conversations/{conv}/items/{items[0]['id']}")
    assert deleted.status_code == 200, deleted.text
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[1] == [assistant("A1", "msg_d1"), user("Q2")]


async def test_no_transaction_or_pooled_connection_is_held_while_waiting_on_upstream(
    start_server: Any, make_tenant: Any, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    # One pooled connection: two turns waiting on the upstream would exhaust it if they held one.
    live: LiveServer = start_server(db_pool_size=1)
    tenant: Tenant = await make_tenant("slow", live=live)
    fake_upstream.enqueue(
        Reply(kind="json", body=text_response("slow 1"), delay=2.0),
        Reply(kind="json", body=text_response("slow 2"), delay=2.0),
    )
    conv_a = await new_conversation(tenant.http)
    conv_b = await new_conversation(tenant.http)
    turns = [
        asyncio.create_task(turn(tenant.http, "A", conversation=conv_a)),
        asyncio.create_task(turn(tenant.http, "B", conversation=conv_b)),
    ]
    await fake_upstream.received(2)
    started = time.monotonic()
    for _ in range(3):
        probe = await tenant.http.get(f"/v1/conversations/{conv_a}")
        assert probe.status_code == 200
    assert time.monotonic() - started < 1.5
    in_transaction = await rows(
        db,
        "SELECT state FROM pg_stat_activity WHERE application_name = 'convstore' "
        "AND datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    assert in_transaction == []
    assert not any(task.done() for task in turns)
    results = await asyncio.gather(*turns)
    assert [r["status"] for r in results] == ["completed", "completed"]


async def test_item_reference_replays_the_stored_item_exactly(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    message = assistant("Answer.", "msg_ref")
    fake_upstream.reply_json(response_with_output([REASONING, message]))
    first = await turn(alice.http, "Original question")
    question_id = (await alice.http.get(f"/v1/responses/{first['id']}/input_items")).json()["data"][0]["id"]

    conv = await new_conversation(alice.http)
    references = [
        {"type": "item_reference", "id": question_id},
        {"type": "item_reference", "id": "rs_up_1"},
        {"id": "msg_ref"},  # OpenAI's ItemReference with `type` left out
        {"type": "message", "role": "user", "content": "Follow-up"},
    ]
    second = await turn(alice.http, references, conversation=conv)
    assert fake_upstream.inputs[1] == [user("Original question"), REASONING, message, {**user("Follow-up")}]
    (stored_reasoning,) = await rows(
        db, "SELECT body FROM item WHERE id = 'rs_up_1' AND response_id = :r", r=first["id"]
    )
    assert stored_reasoning["body"].encode() in fake_upstream.requests[1].raw

    listed = (await alice.http.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"})).json()
    data = listed["data"]
    assert [item["id"] for item in data[1:3]] == ["rs_up_1", "msg_ref"]
    assert data[0]["id"] != question_id and data[0]["id"].startswith("msg_")
    assert data[0]["content"] == user("Original question")["content"]

    # The copies are conversation items now and replay like any other.
    await turn(alice.http, "Next", conversation=conv)
    assert fake_upstream.inputs[2][:3] == [user("Original question"), REASONING, message]


async def test_an_item_reference_cannot_reach_what_only_a_deleted_response_holds(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A deleted response that a later one builds on stays stored, hidden, as that one's history: its items are
    gone for the client, references included (they copied its text into a new response)."""
    fake_upstream.reply_json(text_response("SECRET answer", msg_id="msg_secret"))
    first = await turn(alice.http, "SECRET question")
    question_id = (await alice.http.get(f"/v1/responses/{first['id']}/input_items")).json()["data"][0]["id"]
    fake_upstream.reply_json(text_response("Next"))
    await turn(alice.http, "next", previous_response_id=first["id"])
    assert (await alice.http.delete(f"/v1/responses/{first['id']}")).status_code == 200
    assert await rows(db, "SELECT id FROM response WHERE id = :r AND deleted_at IS NOT NULL", r=first["id"])
    for reference in (question_id, "msg_secret"):
        body = {"model": MODEL, "input": [{"type": "item_reference", "id": reference}]}
        answer = await alice.http.post("/v1/responses", json=body)
        assert answer.status_code == 404, answer.text
        appended = await alice.http.post(
            "/v1/conversations", json={"items": [{"type": "item_reference", "id": reference}]}
        )
        assert appended.status_code == 404, appended.text
    assert len(fake_upstream.requests) == 2
    assert "SECRET" not in str(
        await rows(db, "SELECT body FROM item WHERE response_id IS DISTINCT FROM :r", r=first["id"])
    )


async def test_item_reference_in_conversation_items_create(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(text_response("Stored answer", msg_id="msg_src"))
    await turn(alice.http, "Q")
    conv = await new_conversation(alice.http, items=[{"type": "item_reference", "id": "msg_src"}])
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"]
    assert listed == shown(assistant("Stored answer", "msg_src"))
    await turn(alice.http, "more", conversation=conv)
    assert fake_upstream.inputs[1] == [assistant("Stored answer", "msg_src"), user("more")]


async def test_unknown_item_reference_is_rejected_before_anything_happens(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    body = {
        "model": MODEL,
        "input": [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_nowhere"}],
        "conversation": conv,
    }
    answer = await alice.http.post("/v1/responses", json=body)
    assert answer.status_code == 404  # as OpenAI answers: its SDK raises NotFoundError
    assert answer.json()["error"] == {
        "message": "Item with id 'msg_nowhere' not found.",
        "type": "invalid_request_error",
        "param": "input[1].id",
        "code": "item_not_found",
    }
    store_false = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [{"id": "msg_nowhere"}], "store": False}
    )
    assert store_false.status_code == 404
    added = await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": [{"id": "msg_nowhere"}]})
    assert added.status_code == 404 and added.json()["error"]["param"] == "items[0].id"
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []
    (conv_row,) = await rows(db, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conv)
    assert conv_row["turn_response_id"] is None
