"""An upstream that answers badly: malformed events and items, bodies that are no finished Response, garbage the
HTTP layer cannot decode. Whatever it sends, the client gets a valid answer (a 502 in OpenAI's envelope, or a
stream with its terminal event), what is stored can be listed, addressed and replayed, and the conversation is
free for its next turn."""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, response_with_output, text_response, text_stream_events
from tests.openai_spec import check, check_event
from tests.stream_support import (
    CANONICAL_TEXT_TYPES,
    assert_well_formed,
    conversation_state,
    read_events,
    stored_outputs,
    wait_until_ended,
)
from tests.turn_support import MODEL, new_conversation, rows, turn


def _message(text: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{text}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
        **fields,
    }


async def _streamed(tenant: Tenant, conversation: str | None, **fields: Any) -> list[dict[str, Any]]:
    """A streamed turn in the conversation, or (None) outside any, e.g. continuing a previous_response_id."""
    thread = {"conversation": conversation} if conversation is not None else {}
    body = {"model": MODEL, "input": "q", "stream": True, **thread, **fields}
    async with tenant.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        events = await read_events(answer)
    for event in events:
        check_event(event)
    assert_well_formed(events)
    return events


async def _next_turn_replays(tenant: Tenant, fake: FakeOpenRouter, conversation: str) -> list[dict[str, Any]]:
    """The conversation takes its next turn; returns the history that turn sent upstream, checked replayable."""
    await turn(tenant.http, "next", conversation=conversation)
    sent = fake.inputs[-1]
    for item in sent:
        if item.get("role") == "assistant":
            assert isinstance(item["id"], str) and item["status"] in {"completed", "incomplete"}, item
            assert all(isinstance(part, dict) for part in item["content"]), item
    return sent


async def _addressable(tenant: Tenant, conversation: str) -> list[dict[str, Any]]:
    """Every listed item can be read back by the id it is shown with."""
    listed = (await tenant.http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()
    check("ConversationItemList", listed)
    ids = [item["id"] for item in listed["data"]]
    assert len(set(ids)) == len(ids), ids
    for item in listed["data"]:
        read = await tenant.http.get(f"/v1/conversations/{conversation}/items/{item['id']}")
        assert read.status_code == 200 and read.json() == item, read.text
    data: list[dict[str, Any]] = listed["data"]
    return data


async def test_a_terminal_event_whose_item_has_an_object_id_ends_the_stream_and_frees_the_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """No item events, then a final Response whose item's id is a list: the stream's close used to raise, leaving
    the response in_progress and the conversation claimed for as long as the process lived."""
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(_final_items_with_object_ids())
    events = await _streamed(alice, conversation)
    assert events[-1]["type"] == "response.completed"
    shown = events[-1]["response"]["output"]
    assert [item["content"][0]["text"] for item in shown] == ["x", "y"]
    assert all(item["id"].startswith("msg_") for item in shown) and shown[0]["id"] != shown[1]["id"]
    assert (await conversation_state(db, conversation))["turn_response_id"] is None
    await _addressable(alice, conversation)
    await _next_turn_replays(alice, fake_upstream, conversation)


async def test_the_same_on_a_previous_response_id_turn_ends_its_stream_and_its_chain_continues(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    root = await turn(alice.http, "root")
    fake_upstream.enqueue(_final_items_with_object_ids())
    events = await _streamed(alice, None, previous_response_id=root["id"])
    assert events[-1]["type"] == "response.completed"
    streamed = events[-1]["response"]
    shown = [item["id"] for item in streamed["output"]]
    assert all(item_id.startswith("msg_") for item_id in shown) and shown[0] != shown[1]
    stored = (await alice.http.get(f"/v1/responses/{streamed['id']}")).json()
    check("Response", stored)
    assert stored["status"] == "completed" and [item["id"] for item in stored["output"]] == shown
    await turn(alice.http, "next", previous_response_id=streamed["id"])
    assert [item["id"] for item in fake_upstream.inputs[-1] if item.get("role") == "assistant"][1:] == shown


def _final_items_with_object_ids() -> Reply:
    """No item events, then a final Response whose items' ids are a list and an object."""
    final = response_with_output([_message("x", id=["a"]), _message("y", id={"b": 1})])
    in_progress = text_response("", status="in_progress")
    events = [{"type": "response.created", "response": in_progress}, {"type": "response.completed", "response": final}]
    return Reply(kind="sse", events=events)


async def test_a_content_index_far_ahead_opens_no_parts_beyond_the_next_few(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """One event naming part 100,000 used to announce (and store) every part up to it: 300,000 events relayed."""
    conversation = await new_conversation(alice.http)
    base = text_stream_events("hello", msg_id="msg_s", chunks=2)
    ids = {"item_id": "msg_s", "output_index": 0}
    bad = [
        {"type": "response.output_text.delta", **ids, "content_index": 100_000, "delta": " far"},
        {"type": "response.output_text.delta", **ids, "content_index": -1, "delta": " back"},
        {"type": "response.output_text.delta", **ids, "content_index": "0", "delta": "!"},
    ]
    # Without the upstream's own output_item.done and final output, what is stored is what the deltas built.
    final = {**base[-1], "response": {**base[-1]["response"], "output": []}}
    fake_upstream.enqueue(Reply(kind="sse", events=[*base[:6], *bad, final]))
    events = await _streamed(alice, conversation)
    assert len(events) < 20, [event["type"] for event in events]
    assert [event["type"] for event in events].count("response.content_part.added") == 1
    (message,) = events[-1]["response"]["output"]
    assert [part["text"] for part in message["content"]] == ["hello far back!"]
    (stored,) = await stored_outputs(db, events[-1]["response"]["id"])
    assert len(stored["content"]) == 1


async def test_an_unreadable_summary_index_is_relayed_as_the_first_summary(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    base = text_stream_events("hi", msg_id="msg_s", chunks=1)
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    delta = {"item_id": "rs_1", "output_index": 1, "summary_index": "zero", "delta": "thinking"}
    extra = [
        {"type": "response.output_item.added", "output_index": 1, "item": reasoning},
        {"type": "response.reasoning_summary_text.delta", **delta},
    ]
    final = {**base[-1], "response": {**base[-1]["response"], "output": [base[-2]["item"]]}}
    fake_upstream.enqueue(Reply(kind="sse", events=[*base[:-1], *extra, final]))
    events = await _streamed(alice, conversation)
    assert events[-1]["type"] == "response.completed"
    summary = events[-1]["response"]["output"][1]["summary"]
    assert summary == [{"type": "summary_text", "text": "thinking"}]


@pytest.mark.parametrize("ending", ["bare", "without_status", "status_completed"])
async def test_a_response_failed_event_is_a_failure_whatever_its_response_says(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, ending: str
) -> None:
    conversation = await new_conversation(alice.http)
    error = {"code": "server_error", "message": "the provider fell over"}
    failed: dict[str, Any] = {
        "bare": {"type": "response.failed"},
        "without_status": {"type": "response.failed", "response": {"id": "gen-x", "error": error}},
        "status_completed": {"type": "response.failed", "response": {**text_response("x"), "error": error}},
    }[ending]
    fake_upstream.enqueue(Reply(kind="sse", events=[*text_stream_events("partial", chunks=2)[:-1], failed]))
    events = await _streamed(alice, conversation)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    if ending != "bare":
        assert events[-1]["response"]["error"]["message"] == "the provider fell over"
    assert (await conversation_state(db, conversation))["item_count"] == 0  # a failed turn appends nothing


async def test_a_streamed_item_done_without_its_content_keeps_the_text_the_deltas_carried(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    events = text_stream_events("hello", msg_id="msg_s", chunks=2)
    done = next(event for event in events if event["type"] == "response.output_item.done")
    done["item"] = {key: value for key, value in done["item"].items() if key != "content"}
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    relayed = await _streamed(alice, conversation)
    (message,) = relayed[-1]["response"]["output"]
    assert [part["text"] for part in message["content"]] == ["hello"]
    replayed = await _next_turn_replays(alice, fake_upstream, conversation)
    assert replayed[1]["content"][0]["text"] == "hello"


async def test_unusable_and_repeated_upstream_ids_are_replaced_so_every_item_can_be_addressed(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Ids a client could not send (a number, a path, U+0000, 10,000 characters: the last one also failed the
    store in PostgreSQL's index) and an id given twice in one answer get ids of ours."""
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("first", msg_id="msg_first"))
    await turn(alice.http, "one", conversation=conversation)
    odd_ids: list[Any] = [12345, "msg/evil", "msg_\u0000nul", "m" * 10_000, "msg_dup", "msg_dup", ["x"], ""]
    output = [_message(f"t{number}", id=item_id) for number, item_id in enumerate(odd_ids)]
    fake_upstream.reply_json(response_with_output(output))
    answer = await turn(alice.http, "two", conversation=conversation)
    check("Response", answer)
    shown = [item["id"] for item in answer["output"]]
    assert shown[4] == "msg_dup" and len(set(shown)) == len(shown), shown
    assert all(len(item_id) <= 256 and "/" not in item_id and "\x00" not in item_id for item_id in shown)
    listed = await _addressable(alice, conversation)
    assert [item["content"][0]["text"] for item in listed if item["role"] == "assistant"] == [
        "first",
        *(f"t{number}" for number in range(len(odd_ids))),
    ]
    replayed = await _next_turn_replays(alice, fake_upstream, conversation)
    assert [item["id"] for item in replayed if item.get("role") == "assistant"][1:] == shown


async def test_one_id_at_two_output_indexes_of_a_stream_is_two_items(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    first = text_stream_events("first", msg_id="msg_d", chunks=1)
    second = text_stream_events("second", msg_id="msg_d", chunks=1)
    for event in second[2:-1]:  # the second message's item events, at output index 1
        event["output_index"] = 1
    final = {**second[-1], "response": {**second[-1]["response"], "output": [first[-2]["item"], second[-2]["item"]]}}
    fake_upstream.enqueue(Reply(kind="sse", events=[*first[:-1], *second[2:-1], final]))
    events = await _streamed(alice, conversation)
    texts = [item["content"][0]["text"] for item in events[-1]["response"]["output"]]
    assert texts == ["first", "second"]
    done_at = {
        event["output_index"]: n for n, event in enumerate(events) if event["type"] == "response.output_item.done"
    }
    for number, event in enumerate(events):
        if event["type"] == "response.output_text.delta":
            assert number < done_at[event["output_index"]], "a delta after its item's done event"
    listed = await _addressable(alice, conversation)
    assert [item["content"][0]["text"] for item in listed if item["role"] == "assistant"] == ["first", "second"]


async def test_upstream_items_get_a_status_and_content_the_next_turn_can_send_back(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    output = [
        _message("weird status", status="weird"),
        {"type": "message", "id": "msg_plain", "role": "assistant", "status": "completed", "content": "plain"},
        {"type": "message", "id": "msg_none", "role": "assistant", "status": "completed"},
        _message("parts", content=["a string part", 3, {"type": "output_text", "text": "kept", "annotations": []}]),
    ]
    fake_upstream.reply_json(response_with_output(output))
    answer = await turn(alice.http, "go", conversation=conversation)
    check("Response", answer)
    assert [item["status"] for item in answer["output"]] == ["completed"] * 4
    assert [[part["text"] for part in item["content"]] for item in answer["output"]] == [
        ["weird status"],
        ["plain"],
        [],
        ["kept"],
    ]
    await _next_turn_replays(alice, fake_upstream, conversation)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "has not finished"),
        ({**text_response("x"), "status": "in_progress"}, "has not finished (status in_progress)"),
        ({**text_response("x"), "status": "queued"}, "has not finished (status queued)"),
        ({"error": "Internal Server Error"}, "OpenRouter: Internal Server Error"),
        ({"error": {"code": 500, "message": "Internal"}, "output": []}, "OpenRouter: Internal"),
    ],
)
async def test_a_200_that_is_no_finished_response_is_a_502_and_appends_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, body: dict[str, Any], message: str
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(body)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "q", "conversation": conversation})
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert message in error["message"] and error["type"] == "server_error", error
    state = await conversation_state(db, conversation)
    assert state["item_count"] == 0 and state["turn_response_id"] is None
    await _next_turn_replays(alice, fake_upstream, conversation)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b'"x"' + b"]" * depth


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=200, body=json.dumps(text_response("x")).encode(), headers={"content-encoding": "gzip"}),
        Reply(status=200, body=b'{"status":"completed","output":[],"extra":' + _deep(1200) + b"}"),
        Reply(status=200, body=b'{"status":"completed","output":[],"extra":' + _deep(950) + b',"t":"\\u0041"}'),
    ],
    ids=["not_gzip", "nested_1200", "nested_950_escaped"],
)
async def test_a_body_that_cannot_be_read_is_a_502_on_both_paths(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, reply: Reply
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(reply)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "q", "conversation": conversation})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "upstream_error"
    fake_upstream.enqueue(reply)  # the same to a streamed request: its JSON answer is read as one
    body = {"model": MODEL, "input": "q", "conversation": conversation, "stream": True}
    async with alice.http.stream("POST", "/v1/responses", json=body) as streamed:
        assert streamed.status_code == 502
        assert json.loads(await streamed.aread())["error"]["code"] == "upstream_error"
    assert (await conversation_state(db, conversation))["turn_response_id"] is None


async def test_a_deeply_nested_error_body_is_still_retried(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    deep = Reply(status=503, body=b'{"error":' + _deep(1200) + b"}")
    fake_upstream.enqueue(deep, deep)
    answer = await turn(alice.http, "q")
    assert answer["status"] == "completed"
    assert len(fake_upstream.requests) == 3


async def test_a_gzip_body_that_is_gzip_is_read(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    body = gzip.compress(json.dumps(text_response("zipped")).encode())
    fake_upstream.enqueue(Reply(status=200, body=body, headers={"content-encoding": "gzip"}))
    answer = await turn(alice.http, "q")
    assert answer["output"][0]["content"][0]["text"] == "zipped"


async def test_a_json_answer_to_a_streamed_request_is_relayed_as_a_stream(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("whole", msg_id="msg_whole"))
    events = await _streamed(alice, conversation)
    # The answer's text comes whole, with no delta before it.
    assert [event["type"] for event in events] == [t for t in CANONICAL_TEXT_TYPES if not t.endswith(".delta")]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "whole"
    replayed = await _next_turn_replays(alice, fake_upstream, conversation)
    assert replayed[1]["id"] == "msg_whole"


async def test_a_json_error_to_a_streamed_request_is_that_error(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json({"error": {"code": 402, "message": "Insufficient credits"}})
    body = {"model": MODEL, "input": "q", "stream": True}
    async with alice.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 402
        error = json.loads(await answer.aread())["error"]
    assert "Insufficient credits" in error["message"]


async def test_an_answer_larger_than_a_conversation_may_hold_is_a_502_and_frees_the_conversation(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """Stored, a 50 KB answer in a conversation capped at 20 KB would refuse every later turn of it."""
    small = await make_tenant("small", live=start_server(max_conversation_bytes=20_000))
    conversation = await new_conversation(small.http)
    fake_upstream.reply_json(text_response("x" * 50_000))
    answer = await small.http.post("/v1/responses", json={"model": MODEL, "input": "q", "conversation": conversation})
    assert answer.status_code == 502, answer.text
    assert "MAX_CONVERSATION_BYTES" in answer.json()["error"]["message"]
    # A stream's bytes are bounded at 8 times that: deltas of 200 KB in all are cut, stored as failed.
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("y" * 200_000, chunks=100)))
    events = await _streamed(small, conversation)
    assert events[-1]["type"] == "response.failed"
    assert "passed 160000 bytes" in events[-1]["response"]["error"]["message"]
    state = await conversation_state(db, conversation)
    assert state["item_count"] == 0 and state["turn_response_id"] is None
    await _next_turn_replays(small, fake_upstream, conversation)


@pytest.mark.parametrize(
    ("status", "error", "shown"),
    [
        ("failed", None, {"code": "server_error", "message": "The upstream reported the response as failed"}),
        ("completed", {"code": "server_error", "message": "stray"}, None),
    ],
)
async def test_a_response_carries_an_error_exactly_when_it_failed(
    alice: Tenant, fake_upstream: FakeOpenRouter, status: str, error: Any, shown: Any
) -> None:
    fake_upstream.reply_json({**text_response("x"), "status": status, "error": error})
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "q"})
    body = answer.json()
    check("Response", body)
    assert body["status"] == status and body["error"] == shown, body
    assert (await alice.http.get(f"/v1/responses/{body['id']}")).json()["error"] == shown


async def test_a_call_without_call_id_and_a_summary_of_strings_are_made_answerable_and_replayable(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": ["thinking", 5, {"type": "summary_text", "text": "on"}]}
    call = {"type": "function_call", "id": "fc_1", "name": "get_time", "arguments": {"zone": "UTC"}}
    fake_upstream.reply_json(response_with_output([reasoning, call]))
    answer = await turn(alice.http, "what time is it?", conversation=conversation)
    check("Response", answer)
    shown_reasoning, shown_call = answer["output"]
    assert shown_reasoning["summary"] == [
        {"type": "summary_text", "text": "thinking"},
        {"type": "summary_text", "text": "on"},
    ]
    assert shown_call["call_id"].startswith("call_") and shown_call["arguments"] == '{"zone":"UTC"}'
    output = {"type": "function_call_output", "call_id": shown_call["call_id"], "output": "12:00"}
    await turn(alice.http, [output], conversation=conversation)
    replayed_call, replayed_output = fake_upstream.inputs[-1][2:4]
    assert replayed_call["call_id"] == replayed_output["call_id"] == shown_call["call_id"]


@pytest.mark.parametrize("mode", ["plain", "background", "stream"])
@pytest.mark.parametrize("thread", ["conversation", "chain"])
async def test_an_output_id_an_earlier_turn_holds_is_replaced_so_the_history_sends_each_id_once(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, thread: str, mode: str
) -> None:
    """An upstream that reuses an item id in a later turn: stored twice, the items API reached only the first
    item, an item_reference to it was ambiguous, and every later turn sent the id twice (OpenAI refuses that). Each
    kind of finish (conversation or chain; one the client saw before its end or not, streamed or not) stores the
    second item under an id of ours, and shows that id."""
    conversation = await new_conversation(alice.http) if thread == "conversation" else None
    where: dict[str, Any] = {"conversation": conversation} if conversation else {}
    fake_upstream.reply_json(text_response("first", msg_id="msg_same"))
    first = await turn(alice.http, "one", **where)
    if conversation is None:
        where = {"previous_response_id": first["id"]}
    if mode == "stream":
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("second", msg_id="msg_same")))
        streamed = (await _streamed(alice, conversation, **({} if conversation else where)))[-1]["response"]
        # The stream's final Response keeps the ids its item events carried (the SDK's stream helper checks).
        assert [item["id"] for item in streamed["output"]] == ["msg_same"]
        second = (await alice.http.get(f"/v1/responses/{streamed['id']}")).json()
    else:
        fake_upstream.reply_json(text_response("second", msg_id="msg_same"))
        second = await turn(alice.http, "two", **where, background=mode == "background")
        if mode == "background":
            second = await wait_until_ended(alice.http, second["id"])
    assert second["status"] == "completed"
    [renamed] = [item["id"] for item in second["output"]]
    assert renamed != "msg_same" and renamed.startswith("msg_")
    stored = (await alice.http.get(f"/v1/responses/{second['id']}")).json()
    check("Response", stored)
    assert [item["id"] for item in stored["output"]] == [renamed]
    assert [item["content"][0]["text"] for item in stored["output"]] == ["second"]

    held = await rows(db, "SELECT id, body::jsonb ->> 'id' AS body_id FROM item WHERE is_output ORDER BY pk")
    assert held == [{"id": "msg_same", "body_id": "msg_same"}, {"id": renamed, "body_id": renamed}]
    if conversation is not None:
        await _addressable(alice, conversation)
    else:
        where = {"previous_response_id": second["id"]}
    await turn(alice.http, "three", **where)
    assert [item["id"] for item in fake_upstream.inputs[-1] if item.get("role") == "assistant"] == [
        "msg_same",
        renamed,
    ]


async def test_an_output_id_the_turns_own_input_holds_is_replaced(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The input's own assistant message and the answer under one id: a turn no client saw before its end stores
    both in one statement, which cannot see the input's row, so the turn's inputs are checked before it."""
    conversation = await new_conversation(alice.http)
    mine = _message("mine", id="msg_mine")
    fake_upstream.reply_json(text_response("answer", msg_id="msg_mine"))
    answer = await turn(alice.http, [mine, {"role": "user", "content": "go on"}], conversation=conversation)
    [renamed] = [item["id"] for item in answer["output"]]
    assert renamed != "msg_mine" and renamed.startswith("msg_")
    listed = await _addressable(alice, conversation)
    assert [item["id"] for item in listed if item["role"] == "assistant"] == ["msg_mine", renamed]
    assert await rows(db, "SELECT count(*) AS n FROM item WHERE id = 'msg_mine'") == [{"n": 1}]
