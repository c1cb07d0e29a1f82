"""The offline demo upstream (no OPENROUTER_API_KEY) lets every feature be tried with `make run`: function calls
(tool_choice required / a named function / "tool" in the user text with auto), the message after the call's
output, a reasoning item ("think"), a slow stream ("slowly") to try background, cancel and resume, and
structured output and function arguments that fill their schemas."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pydantic
import pytest

from service.upstream.demo import DemoTransport
from tests.conftest import LiveServer, Tenant
from tests.openai_spec import check, check_event
from tests.stream_support import read_events, wait_until_ended

TOOLS = [
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
]


@pytest.fixture
async def demo(start_server: Callable[..., LiveServer], make_tenant: Callable[..., Awaitable[Tenant]]) -> Tenant:
    return await make_tenant("demo", live=start_server(transport=DemoTransport()))


async def _turn(tenant: Tenant, **body: Any) -> dict[str, Any]:
    answer = await tenant.http.post("/v1/responses", json={"model": "demo/echo", **body})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    check("Response", result)
    return result


@pytest.mark.parametrize(
    ("words", "tool_choice", "called"),
    [
        ("What time is it?", "required", "get_time"),
        ("Weather?", {"type": "function", "name": "get_weather"}, "get_weather"),
        ("Use a tool please", "auto", "get_time"),
        ("Use a tool please", "none", None),
        ("Just chat", "auto", None),
    ],
)
async def test_the_demo_calls_a_function_when_asked(
    demo: Tenant, words: str, tool_choice: Any, called: str | None
) -> None:
    result = await _turn(demo, input=words, tools=TOOLS, tool_choice=tool_choice)
    kinds = [item["type"] for item in result["output"]]
    if called is None:
        assert kinds == ["message"]
    else:
        assert kinds == ["function_call"]
        assert result["output"][0]["name"] == called


async def test_a_function_call_round_trip_ends_with_a_message_quoting_the_output(demo: Tenant) -> None:
    conv = (await demo.http.post("/v1/conversations", json={})).json()["id"]
    first = await _turn(demo, input="What time is it?", tools=TOOLS, tool_choice="required", conversation=conv)
    call = first["output"][0]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "12:00"}
    second = await _turn(demo, input=[output], tools=TOOLS, tool_choice="required", conversation=conv)
    (message,) = second["output"]
    assert message["type"] == "message"
    assert "'12:00'" in message["content"][0]["text"]


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Step(pydantic.BaseModel):
    title: str = pydantic.Field(min_length=8)
    minutes: int = pydantic.Field(gt=0, le=90)
    due: datetime.date


class Plan(pydantic.BaseModel):
    """What an SDK user asks `responses.parse` for: nested models, a list, an enum, a Literal, an Optional."""

    goal: str
    priority: Priority
    kind: Literal["trip", "chore"]
    steps: list[Step] = pydantic.Field(min_length=2)
    owner: str | None
    done: bool
    starts: datetime.datetime


async def test_structured_output_and_function_arguments_follow_their_schemas(demo: Tenant) -> None:
    """The demo answered every `text.format` with its usual sentence and every call with `{}` arguments:
    `responses.parse`, and a tool loop with required parameters, could not be tried without a key."""
    client = demo.openai()
    conv = await client.conversations.create()
    parsed = await client.responses.parse(
        model="demo/echo", input="Plan a trip", text_format=Plan, conversation=conv.id
    )
    plan = parsed.output_parsed
    assert isinstance(plan, Plan)
    assert len(plan.steps) == 2 and all(step.minutes >= 1 for step in plan.steps)
    assert plan.priority is Priority.LOW and plan.kind == "trip"
    # Stored and replayed as any answer is: the next turn's history holds the JSON text.
    items = [item async for item in client.conversations.items.list(conv.id, order="asc")]
    assert json.loads(items[1].content[0].text) == json.loads(parsed.output_text)  # type: ignore[union-attr]

    as_object = await _turn(demo, input="say hi", text={"format": {"type": "json_object"}})
    assert json.loads(as_object["output"][0]["content"][0]["text"]) == {"you_said": "say hi"}

    tools = [
        {
            "type": "function",
            "name": "book",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["Paris", "Rome"]},
                    "nights": {"type": "integer", "minimum": 1},
                    "guests": {"type": "array", "items": {"$ref": "#/$defs/guest"}},
                },
                "required": ["city", "nights", "guests"],
                "additionalProperties": False,
                "$defs": {"guest": {"type": "object", "properties": {"name": {"type": "string"}}}},
            },
        }
    ]
    called = await _turn(demo, input="book it", tools=tools, tool_choice="required")
    (call,) = called["output"]
    assert json.loads(call["arguments"]) == {"city": "Paris", "nights": 1, "guests": [{"name": "demo"}]}


async def test_a_schema_asking_for_an_answer_without_end_gets_a_bounded_one(demo: Tenant) -> None:
    """Arrays of arrays each with a large minItems (100**8 values once encoded), or a minLength of 10**9: the
    demo filled them as asked, and an answer that size never came."""
    nested: dict[str, Any] = {"type": "string", "minLength": 10**9}
    for _ in range(8):
        nested = {"type": "array", "items": nested, "minItems": 100}
    schema = {"type": "object", "properties": {"deep": nested, "huge": {"type": "array", "minItems": 1e300}}}
    answer = await _turn(demo, input="hi", text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    text = answer["output"][0]["content"][0]["text"]
    assert len(text) < 1024 * 1024, len(text)
    value = json.loads(text)
    assert set(value) == {"deep", "huge"} and isinstance(value["deep"], list)


async def test_think_adds_a_reasoning_item_and_streams_spec_events(demo: Tenant) -> None:
    result = await _turn(demo, input="Think about it")
    assert [item["type"] for item in result["output"]] == ["reasoning", "message"]
    assert result["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    body = {"model": "demo/echo", "input": "think, then use a tool", "tools": TOOLS, "stream": True}
    async with demo.http.stream("POST", "/v1/responses", json=body) as answer:
        events = await read_events(answer)
    kinds = [check_event(event) for event in events]
    # OpenRouter's (and OpenAI's) sequence for a reasoning summary: its part opened, its text, its part closed.
    summary = [kind for kind in kinds if kind.startswith("response.reasoning_summary")]
    assert summary == [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
    ]
    assert "response.function_call_arguments.done" in kinds
    final = events[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["reasoning", "function_call"]
    # Each item as its output_item.done showed it is the item the final Response holds.
    done = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert done == final


async def test_slowly_streams_slowly_so_background_can_be_cancelled(demo: Tenant) -> None:
    started = time.monotonic()
    created = await _turn(demo, input="Tell me slowly about the sea", background=True)
    assert created["status"] == "queued"
    await asyncio.sleep(0.6)
    cancelled = (await demo.http.post(f"/v1/responses/{created['id']}/cancel")).json()
    ended = await wait_until_ended(demo.http, created["id"])
    assert ended["status"] == "cancelled", cancelled
    assert time.monotonic() - started < 10
