"""Every object the service returns, every stream event and every error validates against the schema OpenAI's
specification names for it (tests/openai_spec: the spec's own schemas, checked with a JSON Schema validator).

The one deliberate difference: an empty list's `first_id`/`last_id` are null (there is no id to give; the spec
types them as strings). Rendering completes shapes for clients; what is stored stays byte-exact (checked here)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, response_with_output, text_response, text_stream_events
from tests.openai_spec import check, check_event
from tests.stream_support import read_events, wait_until_ended
from tests.turn_support import MODEL, rows

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
REASONING = {
    "type": "reasoning",
    "id": "rs_up_1",
    "summary": [{"type": "summary_text", "text": "Need the weather."}],
    "encrypted_content": "gAAAA-opaque",
}
CALL = {
    "type": "function_call",
    "id": "fc_up_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Paris"}',
    "status": "completed",
}


def check_list(name: str, body: dict[str, Any]) -> None:
    if body["data"]:
        check(name, body)
    else:  # the documented difference: no id to name
        assert body["first_id"] is None and body["last_id"] is None
        check(name, {**body, "first_id": "", "last_id": ""})


def check_error(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    check("ErrorResponse", answer.json())


async def _stream(alice: Tenant, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with alice.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        return await read_events(answer)


def _check_events(events: list[dict[str, Any]]) -> set[str]:
    return {check_event(event) for event in events}


async def test_conversation_objects_match_the_spec(alice: Tenant) -> None:
    http = alice.http
    created = (await http.post("/v1/conversations", json={"metadata": {"topic": "x"}})).json()
    check("ConversationResource", created)
    conv = created["id"]
    check_list("ConversationItemList", (await http.get(f"/v1/conversations/{conv}/items")).json())
    added = await http.post(
        f"/v1/conversations/{conv}/items",
        json={
            "items": [
                {"type": "message", "role": "user", "content": "hi"},
                {k: v for k, v in CALL.items() if k != "id"},
            ]
        },
    )
    assert added.status_code == 200, added.text
    check("ConversationItemList", added.json())
    listed = (await http.get(f"/v1/conversations/{conv}/items")).json()
    check("ConversationItemList", listed)
    for item in listed["data"]:
        check("ConversationItem", (await http.get(f"/v1/conversations/{conv}/items/{item['id']}")).json())
    check("ConversationResource", (await http.post(f"/v1/conversations/{conv}", json={"metadata": {}})).json())
    item_id = listed["data"][0]["id"]
    check("ConversationResource", (await http.delete(f"/v1/conversations/{conv}/items/{item_id}")).json())
    check("DeletedConversationResource", (await http.delete(f"/v1/conversations/{conv}")).json())


async def test_response_objects_match_the_spec_and_stored_items_stay_as_received(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    upstream = text_response("Paris.", msg_id="msg_p")
    fake_upstream.reply_json(upstream)
    conv = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Capital?", "conversation": conv, "tools": TOOLS}
    )
    body = answer.json()
    check("Response", body)
    part = body["output"][0]["content"][0]
    assert part["annotations"] == [] and part["logprobs"] == []
    assert body["tools"][0]["strict"] is None
    assert (body["temperature"], body["top_p"], body["service_tier"]) == (1.0, 1.0, "auto")
    assert "user" not in body
    (stored,) = await rows(db, "SELECT body FROM item WHERE id = 'msg_p'")
    assert json.loads(stored["body"]) == upstream["output"][0]  # no logprobs added to what is stored

    check("Response", (await alice.http.get(f"/v1/responses/{body['id']}")).json())
    check("ResponseItemList", (await alice.http.get(f"/v1/responses/{body['id']}/input_items")).json())
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items")).json()
    check("ConversationItemList", listed)
    assert listed["data"][0]["content"][0]["logprobs"] == []

    fake_upstream.reply_json(response_with_output([REASONING, CALL]))
    echoed = {"user": "u-1", "temperature": 0.3, "prompt_cache_retention": "24h"}
    with_call = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Weather?", "tools": TOOLS, **echoed}
    )
    check("Response", with_call.json())
    assert {name: with_call.json()[name] for name in echoed} == echoed
    assert "prompt_cache_retention" not in body
    # An earlier SDK's spelling is taken, and shown as the spec's.
    fake_upstream.reply_json(response_with_output([REASONING, CALL]))
    older = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "prompt_cache_retention": "in-memory"}
    )
    check("Response", older.json())
    assert older.json()["prompt_cache_retention"] == "in_memory"


async def test_echoed_tools_and_text_are_completed_as_the_response_schema_requires(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A function tool sent without `parameters` is echoed with it null (FunctionTool requires the key, as it
    does `strict`), and a `text` without its format shows the format the model ran with; sent upstream as given."""
    body = {
        "model": MODEL,
        "input": "x",
        "tools": [{"type": "function", "name": "ping"}],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "ping"}]},
        "text": {"verbosity": "low"},
    }
    answer = await alice.http.post("/v1/responses", json=body)
    assert answer.status_code == 200, answer.text
    for shown in (answer.json(), (await alice.http.get(f"/v1/responses/{answer.json()['id']}")).json()):
        check("Response", shown)
        assert shown["tools"] == [{"type": "function", "name": "ping", "parameters": None, "strict": None}]
        assert shown["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    sent = fake_upstream.requests[-1].body
    assert (sent["tools"], sent["text"]) == (body["tools"], body["text"])


async def test_stream_events_match_the_spec(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    seen: set[str] = set()
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Hello there, friend.")))
    events = await _stream(alice, {"model": MODEL, "input": "hi", "stream": True})
    seen |= _check_events(events)
    done = next(e for e in events if e["type"] == "response.content_part.done")
    assert done["part"]["logprobs"] == []

    calls: list[Any] = [
        {"type": "response.created", "response": {"id": "gen-f", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**REASONING, "summary": []}},
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_up_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Need the weather.",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**CALL, "arguments": "", "status": "in_progress"},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_up_1", "output_index": 1, "delta": "{}"},
        {"type": "response.function_call_arguments.done", "item_id": "fc_up_1", "output_index": 1, "arguments": "{}"},
        {"type": "response.output_item.done", "output_index": 1, "item": CALL},
        {"type": "response.completed", "response": {"id": "gen-f", "status": "completed", "output": [REASONING, CALL]}},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=calls))
    seen |= _check_events(await _stream(alice, {"model": MODEL, "input": "Weather?", "tools": TOOLS, "stream": True}))

    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Cut short " * 4, chunks=4), cut_after=6))
    cut = await _stream(alice, {"model": MODEL, "input": "hi", "stream": True})
    seen |= _check_events(cut)
    assert cut[-1]["type"] == "response.failed"

    incomplete = text_stream_events("Long answer cut at the token limit")
    incomplete[-1] = {
        **incomplete[-1],
        "type": "response.incomplete",
        "response": {
            **incomplete[-1]["response"],
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
        },
    }
    fake_upstream.enqueue(Reply(kind="sse", events=incomplete))
    ended = await _stream(alice, {"model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 16})
    seen |= _check_events(ended)
    assert ended[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}

    assert {
        "response.incomplete",
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
        "response.failed",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    } <= seen, seen


async def test_background_responses_are_queued_then_run_and_cancel_answers_a_spec_response(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("slow " * 8, chunks=8), delay=0.3))
    created = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})).json()
    check("Response", created)
    assert created["status"] == "queued"
    assert created["usage"] is None
    for _ in range(100):
        polled = (await alice.http.get(f"/v1/responses/{created['id']}")).json()
        if polled["status"] != "queued":
            break
        await asyncio.sleep(0.02)
    check("Response", polled)
    assert polled["status"] in {"in_progress", "completed"}
    cancelled = await alice.http.post(f"/v1/responses/{created['id']}/cancel")
    check("Response", cancelled.json())
    ended = await wait_until_ended(alice.http, created["id"])
    check("Response", ended)


async def test_streamed_background_turn_starts_with_queued_events(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Hello.")))
    events = await _stream(alice, {"model": MODEL, "input": "hi", "stream": True, "background": True})
    _check_events(events)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.queued"]
    assert events[0]["response"]["status"] == "queued"
    assert events[-1]["type"] == "response.completed"


async def test_errors_match_the_spec(alice: Tenant, anonymous: httpx.AsyncClient) -> None:
    check_error(await alice.http.post("/v1/responses", json={"model": MODEL}), 400)
    check_error(await anonymous.get("/v1/conversations/conv_x"), 401)
    check_error(await alice.http.get("/v1/responses/resp_missing"), 404)
    check_error(await alice.http.get("/v1/conversations/conv_missing/items"), 404)
    check_error(await alice.http.get("/admin/stats"), 403)
    check_error(await alice.http.get("/v1/nowhere"), 404)


async def test_models_and_token_counts_match_the_spec(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    models = (await alice.http.get("/v1/models")).json()
    check("ListModelsResponse", models)
    if models["data"]:
        model_id = models["data"][0]["id"]
        check("Model", (await alice.http.get(f"/v1/models/{model_id}")).json())
    counted = await alice.http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": "hello"})
    assert counted.status_code == 200, counted.text
    check("TokenCountsResource", counted.json())


async def test_service_tier_is_what_the_upstream_reported_else_the_requests_else_auto(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    reported = text_response("Served.")
    reported["service_tier"] = "flex"
    fake_upstream.reply_json(reported)
    served = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "service_tier": "priority"})
    assert served.status_code == 200, served.text
    check("Response", served.json())
    assert served.json()["service_tier"] == "flex"
    assert (await alice.http.get(f"/v1/responses/{served.json()['id']}")).json()["service_tier"] == "flex"
    assert await rows(db, "SELECT service_tier FROM response WHERE id = :id", id=served.json()["id"]) == [
        {"service_tier": "flex"}
    ]
    assert fake_upstream.requests[-1].body["service_tier"] == "priority"  # the request's value goes upstream

    fake_upstream.reply_json(text_response("Unsaid."))  # the upstream reports none
    asked = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "service_tier": "priority"})
    assert asked.json()["service_tier"] == "priority"

    events = text_stream_events("Streamed.")
    events[-1]["response"]["service_tier"] = "scale"
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    async with alice.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        streamed = await read_events(r)
    final = streamed[-1]["response"]
    assert final["service_tier"] == "scale"  # the terminal event says it too
    stored = (await alice.http.get(f"/v1/responses/{final['id']}")).json()
    assert stored["service_tier"] == "scale"


def _ids(kind: str, item_id: str, index: int = 0) -> dict[str, Any]:
    return {"type": kind, "item_id": item_id, "output_index": index}


async def test_items_the_upstream_never_announced_are_announced_as_what_they_are(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """An upstream that skips `output_item.added`: a function call's argument events wait for its done event,
    so the announcement is the call, with its name (the SDK's stream helper asserts it); a reasoning item is
    announced as reasoning; an item only the final Response holds is announced and kept; an OpenRouter event
    name becomes OpenAI's, and an event type outside OpenAI's list is not relayed."""
    reasoning = {**REASONING, "id": "rs_quiet"}
    final = response_with_output([reasoning, CALL, {**CALL, "id": "fc_final_only", "call_id": "call_2"}])
    events = [
        {"type": "response.created", "response": {**final, "status": "in_progress", "output": []}},
        {**_ids("response.reasoning_summary_text.delta", "rs_quiet"), "summary_index": 0, "delta": "Need "},
        {**_ids("response.reasoning.delta", "rs_quiet"), "delta": "thinking"},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {"type": "x-provider.heartbeat", "output_index": 1},
        {**_ids("response.function_call_arguments.delta", "fc_up_1", 1), "delta": '{"city":'},
        {**_ids("response.function_call_arguments.delta", "fc_up_1", 1), "delta": '"Paris"}'},
        {**_ids("response.function_call_arguments.done", "fc_up_1", 1), "arguments": '{"city":"Paris"}'},
        {"type": "response.output_item.done", "output_index": 1, "item": CALL},
        {"type": "response.completed", "response": final},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    streamed = await _stream(alice, {"model": MODEL, "input": "weather?", "tools": TOOLS, "stream": True})
    _check_events(streamed)
    added = [
        (e["output_index"], e["item"]["type"], e["item"]["id"])
        for e in streamed
        if e["type"] == "response.output_item.added"
    ]
    assert added == [
        (0, "reasoning", "rs_quiet"),
        (1, "function_call", "fc_up_1"),
        (2, "function_call", "fc_final_only"),
    ]
    announced_call = next(
        e["item"] for e in streamed if e["type"] == "response.output_item.added" and e["output_index"] == 1
    )
    assert (announced_call["name"], announced_call["call_id"], announced_call["arguments"]) == (
        "get_weather",
        "call_1",
        "",
    )
    [arguments_done] = [e for e in streamed if e["type"] == "response.function_call_arguments.done"]
    assert arguments_done["name"] == "get_weather"
    assert [e["delta"] for e in streamed if e["type"] == "response.function_call_arguments.delta"] == [
        '{"city":',
        '"Paris"}',
    ]
    assert [e["delta"] for e in streamed if e["type"] == "response.reasoning_text.delta"] == ["thinking"]
    assert not [e for e in streamed if not e["type"].startswith(("response.", "error"))]
    terminal = streamed[-1]
    assert [item["id"] for item in terminal["response"]["output"]] == ["rs_quiet", "fc_up_1", "fc_final_only"]
    stored = (await alice.http.get(f"/v1/responses/{terminal['response']['id']}")).json()
    assert [item["id"] for item in stored["output"]] == ["rs_quiet", "fc_up_1", "fc_final_only"]

    # The SDK's stream helper follows such a stream to its final response.
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    async with alice.openai().responses.stream(model=MODEL, input="again", tools=TOOLS) as stream:  # type: ignore[arg-type]
        async for _ in stream:
            pass
        done = await stream.get_final_response()
    assert [item.type for item in done.output] == ["reasoning", "function_call", "function_call"]


async def test_a_failed_responses_error_code_is_one_of_openais(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Whatever code the upstream's failed Response carries (a number, a provider's own word), clients read one of
    ResponseErrorCode's values with the message as it came; the stored error keeps the upstream's code."""
    cases = [(502, "server_error"), ("provider_error", "server_error"), ("context_length_exceeded", "invalid_prompt")]
    for code, shown in cases:
        fake_upstream.reply_json(
            response_with_output([], status="failed", error={"code": code, "message": f"upstream said {code}"})
        )
        answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        check("Response", body)
        assert body["error"] == {"code": shown, "message": f"upstream said {code}"}
        assert (await alice.http.get(f"/v1/responses/{body['id']}")).json()["error"] == body["error"]
        [stored] = await rows(db, "SELECT error FROM response WHERE id = :r", r=body["id"])
        assert stored["error"]["code"] == code
    failing = [
        {"type": "response.created", "response": text_response("", status="in_progress")},
        {"type": "error", "code": "context_length_exceeded", "message": "too long for the provider"},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=failing))
    streamed = await _stream(alice, {"model": MODEL, "input": "x", "stream": True})
    _check_events(streamed)
    assert streamed[-1]["type"] == "response.failed"
    assert streamed[-1]["response"]["error"] == {"code": "invalid_prompt", "message": "too long for the provider"}


async def test_compaction_usage_and_include_values_match_the_spec(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(text_response("A summary.", msg_id="msg_summary"))
    # A kept user message is shown as every item is: an image without `detail` gets OpenAI's "auto".
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    looked = {"role": "user", "content": [{"type": "input_text", "text": "a"}, image]}
    inputs = [looked, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "input": inputs})
    assert compacted.status_code == 200, compacted.text
    check("CompactResource", compacted.json())
    assert compacted.json()["output"][0]["content"][1] == {**image, "detail": "auto"}
    calls = len(fake_upstream.requests)
    for include in (["bogus"], ["reasoning.encrypted_content", "message.output_text.logprob"]):
        refused = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "include": include})
        check_error(refused, 400)
        assert refused.json()["error"]["param"] == "include"
    assert len(fake_upstream.requests) == calls


# OpenRouter's schema makes these optional where OpenAI's requires them (a web search call's action, a URL
# citation's title): shown completed, stored and replayed as received.
SEARCH = {"type": "web_search_call", "id": "ws_up_1", "status": "completed"}
CITATION = {"type": "url_citation", "url": "https://example.com", "start_index": 0, "end_index": 5}
CITED = {
    "type": "message",
    "id": "msg_up_w",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Paris is nice.", "annotations": [CITATION]}],
}


async def test_web_search_calls_and_citations_without_openais_required_fields_are_shown_completed(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(response_with_output([SEARCH, CITED]))
    conv = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    body = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conv})).json()
    check("Response", body)
    assert body["output"][0]["action"] == {"type": "search"}
    assert body["output"][1]["content"][0]["annotations"] == [{**CITATION, "title": ""}]
    check("ConversationItemList", (await alice.http.get(f"/v1/conversations/{conv}/items")).json())
    stored = await rows(db, "SELECT id, body FROM item WHERE id IN ('ws_up_1', 'msg_up_w') ORDER BY position")
    assert [json.loads(row["body"]) for row in stored] == [SEARCH, CITED]
    fake_upstream.reply_json(text_response("ok"))
    await alice.http.post("/v1/responses", json={"model": MODEL, "input": "again", "conversation": conv})
    assert fake_upstream.requests[-1].body["input"][1:3] == [SEARCH, CITED]

    ids = {"item_id": "msg_up_w", "output_index": 1, "content_index": 0}
    events: list[Any] = [
        {"type": "response.created", "response": {"id": "gen-w", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**SEARCH, "status": "in_progress"}},
        {"type": "response.output_item.done", "output_index": 0, "item": SEARCH},
        {"type": "response.output_item.added", "output_index": 1, "item": {**CITED, "content": []}},
        {"type": "response.content_part.added", **ids, "part": {"type": "output_text", "text": ""}},
        {"type": "response.output_text.delta", **ids, "delta": "Paris is nice."},
        {"type": "response.output_text.annotation.added", **ids, "annotation_index": 0, "annotation": CITATION},
        {"type": "response.output_text.done", **ids, "text": "Paris is nice."},
        {"type": "response.content_part.done", **ids, "part": CITED["content"][0]},
        {"type": "response.output_item.done", "output_index": 1, "item": CITED},
        {"type": "response.completed", "response": {"id": "gen-w", "status": "completed", "output": [SEARCH, CITED]}},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    streamed = await _stream(alice, {"model": MODEL, "input": "hi", "stream": True})
    seen = _check_events(streamed)
    assert "response.output_text.annotation.added" in seen
    added = next(e for e in streamed if e["type"] == "response.output_text.annotation.added")
    assert added["annotation"]["title"] == ""
    assert streamed[-1]["response"]["output"][0]["action"] == {"type": "search"}


async def test_include_on_reads_is_checked_as_on_create(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """OpenAI's reads take `include` too (its SDK sends `include[]=`): an unknown value is a 400, as on
    POST /v1/responses, not silently ignored; a known one is answered."""
    fake_upstream.reply_json(text_response("Hello", msg_id="msg_inc"))
    conv = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    done = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conv})).json()
    reads = [
        ("GET", f"/v1/responses/{done['id']}"),
        ("GET", f"/v1/responses/{done['id']}/input_items"),
        ("GET", f"/v1/conversations/{conv}/items"),
        ("GET", f"/v1/conversations/{conv}/items/msg_inc"),
        ("POST", f"/v1/conversations/{conv}/items"),
    ]
    body = {"items": [{"role": "user", "content": "more"}]}
    for method, path in reads:
        for name in ("include", "include[]"):
            refused = await alice.http.request(method, path, params={name: "bogus"}, json=body)
            assert refused.status_code == 400, (method, path, name, refused.text)
            assert refused.json()["error"]["param"] == "include"
    assert (await alice.http.get(f"/v1/conversations/{conv}/items")).json()["data"][0]["content"][0]["text"] == "Hello"
    client = alice.openai()
    wanted: Any = ["reasoning.encrypted_content", "message.output_text.logprobs"]
    assert (await client.responses.retrieve(done["id"], include=wanted)).id == done["id"]
    assert (await client.responses.input_items.list(done["id"], include=wanted)).data
    listed = await client.conversations.items.list(conv, include=wanted)
    assert "msg_inc" in [item.id for item in listed.data]
    assert (await client.conversations.items.retrieve("msg_inc", conversation_id=conv, include=wanted)).id == "msg_inc"


# A shell call as the shapes clients send it (FunctionShellCallItemParam) leaves out what the schema of the item
# shown requires, nullable: the environment, the action's limits, the output's max_output_length.
SHELL_CALL = {
    "type": "shell_call",
    "id": "sh_up_1",
    "call_id": "call_sh_1",
    "status": "completed",
    "action": {"commands": ["ls"]},
}
SHELL_OUTPUT = {
    "type": "shell_call_output",
    "call_id": "call_sh_1",
    "output": [{"stdout": "a.txt\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}],
}


async def test_shell_calls_and_outputs_are_shown_with_the_nullable_fields_the_schema_requires(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(response_with_output([SHELL_CALL]))
    conv = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    body = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "ls", "conversation": conv})).json()
    check("Response", body)
    assert body["output"][0]["environment"] is None
    assert body["output"][0]["action"] == {"commands": ["ls"], "timeout_ms": None, "max_output_length": None}
    fake_upstream.reply_json(text_response("one file"))
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [SHELL_OUTPUT], "conversation": conv}
    )
    assert answer.status_code == 200, answer.text
    listed = (await alice.http.get(f"/v1/conversations/{conv}/items", params={"order": "asc"})).json()
    check("ConversationItemList", listed)
    assert [item["type"] for item in listed["data"]] == ["message", "shell_call", "shell_call_output", "message"]
    assert listed["data"][2]["max_output_length"] is None
    check("ResponseItemList", (await alice.http.get(f"/v1/responses/{answer.json()['id']}/input_items")).json())
    # Stored and replayed as received.
    stored = await rows(db, "SELECT body FROM item WHERE conversation_id = :c ORDER BY position", c=conv)
    assert [json.loads(row["body"]) for row in stored][1:3] == [SHELL_CALL, SHELL_OUTPUT]
    fake_upstream.reply_json(text_response("ok"))
    await alice.http.post("/v1/responses", json={"model": MODEL, "input": "again", "conversation": conv})
    assert fake_upstream.requests[-1].body["input"][1:3] == [SHELL_CALL, SHELL_OUTPUT]

    events: list[Any] = [
        {"type": "response.created", "response": {"id": "gen-sh", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**SHELL_CALL, "status": "in_progress"}},
        {"type": "response.output_item.done", "output_index": 0, "item": SHELL_CALL},
        {"type": "response.completed", "response": {"id": "gen-sh", "status": "completed", "output": [SHELL_CALL]}},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    streamed = await _stream(alice, {"model": MODEL, "input": "ls", "stream": True})
    assert "response.output_item.done" in _check_events(streamed)
    done = next(e for e in streamed if e["type"] == "response.output_item.done")
    assert (done["item"]["environment"], done["item"]["action"]["timeout_ms"]) == (None, None)
