"""Request validation: malformed bodies, Unicode that cannot be stored, metadata limits, item shapes and counts.
Every refusal is a 400 (413 for the body size) in OpenAI's envelope naming the field, and nothing is stored or
sent upstream."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.turn_support import MODEL, new_conversation, rows


async def _nothing_happened(db: AsyncEngine, fake_upstream: FakeOpenRouter) -> None:
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []


def _error(answer: Any, status: int = 400) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"model": "m", "input": "x"', "not valid JSON"),
        (b'{"model": "m", "input": "x",}', "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": "m", "input": "\xff\xfe"}', "not valid UTF-8"),
        (b'{"model": "m", "input": "half \\ud800 pair"}', "lone UTF-16 surrogate"),
        (b'{"model": "m", "input": "x", "metadata": {"\\udfff": "v"}}', "lone UTF-16 surrogate"),
        (b'{"model": "m", "input": "x", "max_output_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_a_clear_400(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, raw: bytes, expected: str
) -> None:
    for path in ("/v1/responses", "/v1/conversations"):
        answer = await alice.http.post(path, content=raw, headers={"content-type": "application/json"})
        error = _error(answer)
        assert expected in error["message"], error
        assert error["code"] == "invalid_json"
    await _nothing_happened(db, fake_upstream)
    assert await rows(db, "SELECT id FROM conversation") == []


async def test_a_valid_surrogate_pair_escape_is_accepted(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    raw = b'{"model": "m", "input": "pair \\ud83d\\ude00 ok"}'
    answer = await alice.http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert fake_upstream.inputs[0][0]["content"][0]["text"] == "pair \U0001f600 ok"


async def test_body_over_the_size_limit_gets_413(alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine) -> None:
    big = b'{"model": "m", "input": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    answer = await alice.http.post("/v1/responses", content=big, headers={"content-type": "application/json"})
    error = _error(answer, 413)
    assert error["code"] == "payload_too_large"
    assert "too large" in error["message"]
    await _nothing_happened(db, fake_upstream)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "", "input": "x"}, "model"),
        ({"model": 5, "input": "x"}, "model"),
        ({"model": "m\u0000", "input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": None}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": "x", "instructions": 5}, "instructions"),
        ({"model": "m", "input": "x", "store": "yes"}, "store"),
        ({"model": "m", "input": "x", "store": False, "conversation": "conv_x"}, "store"),
        ({"model": "m", "input": "x", "conversation": 5}, "conversation"),
        ({"model": "m", "input": "x", "conversation": {"name": "c"}}, "conversation"),
        ({"model": "m", "input": "x", "previous_response_id": 5}, "previous_response_id"),
        ({"model": "m", "input": "x", "metadata": "m"}, "metadata"),
        # Without stream, stream_options is refused as such; with it, as no object.
        ({"model": "m", "input": "x", "stream_options": 5}, "stream_options"),
        ({"model": "m", "input": "x", "prompt_cache_retention": "7d"}, "prompt_cache_retention"),
        ({"model": "m", "input": "x", "prompt": "pmpt_1"}, "prompt"),
        ({"model": "m", "input": "x", "prompt": {"version": "2"}}, "prompt.id"),
        ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1", "version": 2}}, "prompt.version"),
        ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1", "variables": []}}, "prompt.variables"),
        ({"model": "m", "input": ["x"]}, "input[0]"),
        ({"model": "m", "input": [{"content": "x"}]}, "input[0].type"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        (
            {"model": "m", "input": [{"role": "assistant", "content": [{"type": "summary_text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        (
            {"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "input[0].name",
        ),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"type": "reasoning"}]}, "input[0].summary"),
        (
            {"model": "m", "input": [{"type": "reasoning", "summary": [], "encrypted_content": 123}]},
            "input[0].encrypted_content",
        ),
        (
            {"model": "m", "input": [{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text"}]}]},
            "input[0].content",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "bogus"}]}]},
            "input[0].output[0].type",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": [1]}]},
            "input[0].output[0]",
        ),
        (
            {"model": "m", "input": [{"role": "assistant", "content": [{"type": "refusal"}]}]},
            "input[0].content[0].refusal",
        ),
        (
            {
                "model": "m",
                "input": [{"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [1]}]}],
            },
            "input[0].content[0].annotations",
        ),
        (
            {
                "model": "m",
                "input": [{"role": "assistant", "content": [{"type": "output_text", "text": "x", "logprobs": "no"}]}],
            },
            "input[0].content[0].logprobs",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].input_audio",
        ),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x", "detail": "weird"}]}],
            },
            "input[0].content[0].detail",
        ),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x", "detail": []}]}],
            },
            "input[0].content[0].detail",
        ),
        ({"model": "m", "input": [{"type": "item_reference"}]}, "input[0].id"),
        ({"model": "m", "input": [{"type": "item_reference", "id": 5}]}, "input[0].id"),
        ({"model": "m", "input": [{"role": "user", "content": "x", "id": ""}]}, "input[0].id"),
        ({"model": "m", "input": [{"role": "user", "content": "x", "id": "m\u0000"}]}, "input[0].id"),
        (
            {"model": "m", "input": [{"role": "user", "content": "ok"}, {"role": "bot", "content": "x"}]},
            "input[1].role",
        ),
        ({"model": "m", "input": [{"type": "bogus", "id": "b_1"}]}, "input[0].type"),
        ({"model": "m", "input": [{"role": "user", "content": "x", "status": 5}]}, "input[0].status"),
        (
            {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": []}]},
            "tools[0].parameters",
        ),
        ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "strict": "x"}]}, "tools[0].strict"),
        (
            {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "description": 1}]},
            "tools[0].description",
        ),
        ({"model": "m", "input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "function", "name": []}}, "tool_choice.name"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "custom", "name": ""}}, "tool_choice.name"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "mcp"}}, "tool_choice.server_label"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice.mode"),
        ({"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "mode": "auto"}}, "tool_choice.tools"),
        (
            {"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "mode": "x", "tools": []}},
            "tool_choice.mode",
        ),
        (
            {"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [1]}},
            "tool_choice.tools",
        ),
        ({"model": "m", "input": "x", "text": {"verbosity": []}}, "text.verbosity"),
        ({"model": "m", "input": "x", "text": {"verbosity": "loud"}}, "text.verbosity"),
        (
            {
                "model": "m",
                "input": "x",
                "text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": "yes"}},
            },
            "text.format.strict",
        ),
        ({"model": "m", "input": "x", "safety_identifier": "s" * 65}, "safety_identifier"),
        ({"model": "m", "input": "x", "temperature": 5}, "temperature"),
        ({"model": "m", "input": "x", "temperature": "hot"}, "temperature"),
        ({"model": "m", "input": "x", "temperature": True}, "temperature"),
        ({"model": "m", "input": "x", "top_p": 3}, "top_p"),
        ({"model": "m", "input": "x", "top_p": -0.1}, "top_p"),
        ({"model": "m", "input": "x", "presence_penalty": 2.5}, "presence_penalty"),
        ({"model": "m", "input": "x", "max_output_tokens": -1}, "max_output_tokens"),
        ({"model": "m", "input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"model": "m", "input": "x", "top_logprobs": 21}, "top_logprobs"),
        ({"model": "m", "input": "x", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"model": "m", "input": "x", "user": 5}, "user"),
        ({"model": "m", "input": "x", "tools": 5}, "tools"),
        ({"model": "m", "input": "x", "tools": [5]}, "tools[0]"),
        ({"model": "m", "input": "x", "tools": [{"type": "nonsense", "x": 1}, {}]}, "tools[1].type"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "input": "x", "tool_choice": 1}, "tool_choice"),
        ({"model": "m", "input": "x", "tool_choice": {"name": "f"}}, "tool_choice.type"),
        ({"model": "m", "input": "x", "reasoning": "high"}, "reasoning"),
        ({"model": "m", "input": "x", "reasoning": {"effort": "ultra"}}, "reasoning.effort"),
        ({"model": "m", "input": "x", "reasoning": {"summary": "long"}}, "reasoning.summary"),
        ({"model": "m", "input": "x", "text": "json"}, "text"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        (
            {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": 1}}},
            "text.format.schema",
        ),
        ({"model": "m", "input": "x", "service_tier": "gold"}, "service_tier"),
        # Sent on unchecked before, and echoed where the Response's schema types them.
        ({"model": "m", "input": "x", "reasoning": {"generate_summary": "long"}}, "reasoning.generate_summary"),
        ({"model": "m", "input": "x", "reasoning": {"mode": 5}}, "reasoning.mode"),
        ({"model": "m", "input": "x", "reasoning": {"context": ["all_turns"]}}, "reasoning.context"),
        ({"model": "m", "input": "x", "prompt": {"id": "pmpt_1", "variables": {"city": 5}}}, "prompt.variables.city"),
        ({"model": "m", "input": "x", "prompt_cache_options": "explicit"}, "prompt_cache_options"),
        ({"model": "m", "input": "x", "prompt_cache_options": {"mode": "manual"}}, "prompt_cache_options.mode"),
        ({"model": "m", "input": "x", "prompt_cache_options": {"ttl": 30}}, "prompt_cache_options.ttl"),
        # OpenRouter runs no moderation: sent on, it was ignored, the output unmoderated.
        ({"model": "m", "input": "x", "moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        # The spec's minItems: an empty list turned compaction on without a threshold.
        ({"model": "m", "input": "x", "context_management": []}, "context_management"),
        ({"model": "m", "input": "x", "include": "reasoning.encrypted_content"}, "include"),
        # Item fields OpenAI's schema types: stored, they would go upstream on every later turn.
        ({"model": "m", "input": [{"role": "assistant", "content": "a", "status": "bogus"}]}, "input[0].status"),
        ({"model": "m", "input": [{"type": "reasoning", "summary": [5]}]}, "input[0].summary[0]"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]},
            "input[0].content[0].image_url",
        ),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "t", "annotations": 5}]}],
            },
            "input[0].content[0].annotations",
        ),
    ],
)
async def test_invalid_turn_requests_name_the_field(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, body: dict[str, Any], param: str
) -> None:
    error = _error(await alice.http.post("/v1/responses", json=body))
    assert error["param"] == param, error
    assert error["message"]
    await _nothing_happened(db, fake_upstream)
    # Refused as well when the turn would run in the background or stream (whose first answer renders them).
    conv = await new_conversation(alice.http)
    for extra in ({"stream": True}, {"background": True}, {"conversation": conv, "stream": True}):
        if set(extra) & set(body):
            continue
        answer = await alice.http.post("/v1/responses", json={**body, **extra})
        assert _error(answer)["param"] == param, (extra, answer.text)
    await _nothing_happened(db, fake_upstream)
    # and the conversation was left free.
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": conv})
    assert answer.status_code == 200, answer.text


async def test_stream_options_are_taken_only_with_stream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """As OpenAI answers; the options are not sent upstream (the service streams to its client itself)."""
    options = {"include_obfuscation": False}
    error = _error(
        await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "stream_options": options})
    )
    assert error["param"] == "stream_options" and "stream is true" in error["message"]
    await _nothing_happened(db, fake_upstream)
    streamed = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "stream": True, "stream_options": options}
    )
    assert streamed.status_code == 200, streamed.text
    assert "stream_options" not in fake_upstream.requests[-1].body


async def test_generation_parameters_both_apis_accept_go_upstream_as_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    accepted = {
        "temperature": 0,
        "top_p": 1,
        "presence_penalty": -2,
        "max_output_tokens": 16,
        "top_logprobs": 20,
        "parallel_tool_calls": False,
        "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "strict": True},
            {"type": "function", "name": "g", "description": None, "parameters": None, "strict": None},
            {"type": "openrouter:web_search", "parameters": {"max_results": 3}},
        ],
        "tool_choice": {"type": "function", "name": "f"},
        "safety_identifier": "s" * 64,
        "reasoning": {"effort": "xhigh", "summary": "auto"},
        "text": {
            "format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": False},
            "verbosity": "low",
        },
        "service_tier": "flex",
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
        "prompt": {"id": "pmpt_1", "variables": {"city": "Paris", "logo": {"type": "input_text", "text": "x"}}},
    }
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", **accepted})
    assert answer.status_code == 200, answer.text
    sent = fake_upstream.requests[0].body
    assert {name: sent[name] for name in accepted} == accepted
    # A value of OpenAI's enum that OpenRouter's lacks is OpenRouter's to judge (it was refused here).
    newer = {"service_tier": "ultrafast", "reasoning": {"mode": "pro", "context": "all_turns"}}
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", **newer})
    assert answer.status_code == 200, answer.text
    assert {name: fake_upstream.requests[-1].body[name] for name in newer} == newer
    assert answer.json()["service_tier"] == "ultrafast"


async def test_the_valid_forms_of_checked_items_and_parts_go_upstream_as_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "sealed", "content": None},
        {"type": "reasoning", "id": "rs_2", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c",
            "output": [{"type": "input_text", "text": "42"}, {"type": "input_image", "image_url": "https://x/y.png"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_a",
            "status": "completed",
            "content": [
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "x", "annotations": [{"type": "url_citation"}], "logprobs": []},
            ],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "original"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": None},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            ],
        },
    ]
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": items})
    assert answer.status_code == 200, answer.text
    # But for an image's detail, which OpenRouter's schema requires: OpenAI's default, `auto`, when left out.
    items[3]["output"][1]["detail"] = "auto"
    items[5]["content"][1]["detail"] = "auto"
    assert fake_upstream.inputs[0] == items


async def test_item_shape_errors_also_apply_to_conversation_items(alice: Tenant, db: AsyncEngine) -> None:
    bad = [{"role": "user", "content": "fine"}, {"type": "function_call_output", "output": "x"}]
    error = _error(await alice.http.post("/v1/conversations", json={"items": bad}))
    assert error["param"] == "items[1].call_id"
    assert await rows(db, "SELECT id FROM conversation") == []
    conv = await new_conversation(alice.http)
    error = _error(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": bad}))
    assert error["param"] == "items[1].call_id"
    assert _error(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": []}))["param"] == "items"
    assert _error(await alice.http.post(f"/v1/conversations/{conv}/items", json={}))["param"] == "items"
    assert _error(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": "x"}))["param"] == "items"
    assert await rows(db, "SELECT id FROM item") == []


async def test_at_most_twenty_items_per_conversation_call(alice: Tenant, db: AsyncEngine) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(21)]
    error = _error(await alice.http.post("/v1/conversations", json={"items": items}))
    assert error["param"] == "items"
    assert error["code"] == "too_many_items"
    assert "20" in error["message"]
    assert await rows(db, "SELECT id FROM conversation") == []

    conv = await new_conversation(alice.http, items=items[:20])
    error = _error(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": items}))
    assert error["param"] == "items"
    added = await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": items[:20]})
    assert added.status_code == 200
    assert len(await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=conv)) == 40


async def test_input_item_count_limit(
    start_server: Any, make_tenant: Any, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    live: LiveServer = start_server(max_input_items=3)
    tenant: Tenant = await make_tenant("limited", live=live)
    items = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    error = _error(await tenant.http.post("/v1/responses", json={"model": MODEL, "input": items}))
    assert error["param"] == "input"
    assert error["code"] == "too_many_items"
    await _nothing_happened(db, fake_upstream)
    ok = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": items[:3]})
    assert ok.status_code == 200


def _metadata_cases() -> list[tuple[Any, str]]:
    return [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata." + "k" * 65),
        ({"k": "v" * 513}, "metadata.k"),
        ({"k": 5}, "metadata.k"),
        ({"k": None}, "metadata.k"),
        ({"k": "a\u0000b"}, "metadata.k"),
        (["k"], "metadata"),
    ]


@pytest.mark.parametrize(("metadata", "param"), _metadata_cases())
async def test_metadata_limits_on_every_route(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, metadata: Any, param: str
) -> None:
    conv = await new_conversation(alice.http, metadata={"keep": "me"})
    for path, body in [
        ("/v1/responses", {"model": MODEL, "input": "x", "metadata": metadata}),
        ("/v1/conversations", {"metadata": metadata}),
        (f"/v1/conversations/{conv}", {"metadata": metadata}),
    ]:
        error = _error(await alice.http.post(path, json=body))
        assert error["param"] == param, (path, error)
    await _nothing_happened(db, fake_upstream)
    assert (await alice.http.get(f"/v1/conversations/{conv}")).json()["metadata"] == {"keep": "me"}
    assert len(await rows(db, "SELECT id FROM conversation")) == 1


async def test_metadata_at_the_limits_is_accepted(alice: Tenant) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    conv = await alice.http.post("/v1/conversations", json={"metadata": metadata})
    assert conv.status_code == 200
    assert conv.json()["metadata"] == metadata
    response = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "metadata": metadata})
    assert response.status_code == 200
    assert response.json()["metadata"] == metadata
    emoji = {"\U0001f600" * 64: "\U0001f600" * 512}
    assert (await alice.http.post("/v1/conversations", json={"metadata": emoji})).status_code == 200


async def test_ids_that_cannot_exist_are_not_found(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conv = await new_conversation(alice.http)
    for method, path in [
        ("GET", "/v1/conversations/conv%00x"),
        ("DELETE", "/v1/conversations/conv%00x"),
        ("GET", "/v1/conversations/conv%00x/items"),
        ("GET", f"/v1/conversations/{conv}/items/msg%00x"),
        ("DELETE", f"/v1/conversations/{conv}/items/msg%00x"),
        ("GET", "/v1/responses/resp%00x"),
        ("DELETE", "/v1/responses/resp%00x"),
        ("GET", "/v1/responses/resp%00x/input_items"),
    ]:
        answer = await alice.http.request(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
    answer = await alice.http.post("/v1/conversations/conv%00x", json={"metadata": {}})
    assert answer.status_code == 404
    chained = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": "resp\u0000"}
    )
    assert chained.status_code == 400
    assert chained.json()["error"]["code"] == "previous_response_not_found"
    in_conv = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": "c\u0000"})
    assert in_conv.status_code == 404
    assert fake_upstream.requests == []


async def test_unauthenticated_requests_are_refused(anonymous: Any, alice: Tenant) -> None:
    for method, path in [("POST", "/v1/responses"), ("GET", "/v1/conversations/conv_x"), ("POST", "/v1/conversations")]:
        answer = await anonymous.request(method, path, json={})
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
    wrong = await anonymous.post("/v1/conversations", json={}, headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401
    assert "sk-wrong" not in wrong.text
    # The key is checked before the body is read: a caller without one learns nothing about its body.
    unreadable = await anonymous.post(
        "/v1/responses", content=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    assert unreadable.status_code == 401 and unreadable.json()["error"]["type"] == "authentication_error"


async def test_a_tool_output_whose_call_the_context_does_not_hold_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """OpenAI's 400; OpenRouter's providers refuse such an output too, and once stored in a conversation every
    later turn sent it (a long-conversation review found threads stuck so). The call may be in the same input."""
    orphan = {"type": "function_call_output", "call_id": "call_nowhere", "output": "42"}
    message = "No tool call found for function call output with call_id call_nowhere."
    error = _error(await alice.http.post("/v1/responses", json={"model": MODEL, "input": [orphan]}))
    assert (error["message"], error["param"]) == (message, "input")
    await _nothing_happened(db, fake_upstream)

    root = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    for extra in ({}, {"stream": True}, {"background": True}):
        chained = await alice.http.post(
            "/v1/responses",
            json={"model": MODEL, "input": [orphan], "previous_response_id": root.json()["id"], **extra},
        )
        assert _error(chained)["message"] == message
    # Streamed and background ones before anything is stored; a plain one, listed on its chain's row by the read
    # that found its history, is stored as failed (and taken off the row), as a conversation turn is.
    stored = await rows(db, "SELECT status FROM response ORDER BY created_at")
    assert [row["status"] for row in stored] == ["completed", "failed"] and len(fake_upstream.requests) == 1
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []
    assert await rows(db, "SELECT turn_response_ids FROM response_chain") == [{"turn_response_ids": []}]

    conversation = await new_conversation(alice.http)
    await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation})
    for extra in ({}, {"stream": True}):
        refused = await alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": [orphan], "conversation": conversation, **extra}
        )
        assert _error(refused)["message"] == message
    assert len(fake_upstream.requests) == 2
    items = await rows(db, "SELECT type FROM item WHERE conversation_id = :c ORDER BY position", c=conversation)
    assert [item["type"] for item in items] == ["message", "message"]

    # With its call in the input, or in the conversation, the output goes.
    call = {"type": "function_call", "call_id": "call_here", "name": "f", "arguments": "{}"}
    answer = {"type": "function_call_output", "call_id": "call_here", "output": "42"}
    together = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [call, answer], "conversation": conversation}
    )
    assert together.status_code == 200, together.text
    # (A second output for call_here would be refused: its call has its output; test_unpaired_tool_items.)
    waiting = {**call, "call_id": "call_there"}
    appended = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [waiting]})
    assert appended.status_code == 200, appended.text
    later = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": [{**answer, "call_id": "call_there"}], "conversation": conversation},
    )
    assert later.status_code == 200, later.text
