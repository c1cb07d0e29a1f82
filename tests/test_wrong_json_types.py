"""An array or an object where a field takes a string (a role, a type, an enum value) is the client's mistake like
any other wrong value: a 400 in OpenAI's envelope naming the field, on every route that reads it, and nothing
stored or sent upstream. Sets of accepted words cannot even be asked whether they hold an array or an object."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.turn_support import MODEL, new_conversation, rows

NOT_A_STRING = ([], ["user"], {}, {"x": 1})

# (body, path to the field, the param the error names) for POST /v1/responses.
_TURN_FIELDS: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
    ({"service_tier": "flex"}, ("service_tier",), "service_tier"),
    ({"reasoning": {"effort": "low"}}, ("reasoning", "effort"), "reasoning.effort"),
    ({"reasoning": {"summary": "auto"}}, ("reasoning", "summary"), "reasoning.summary"),
    ({"text": {"format": {"type": "text"}}}, ("text", "format", "type"), "text.format.type"),
    ({"truncation": "auto"}, ("truncation",), "truncation"),
    ({"include": ["reasoning.encrypted_content"]}, ("include", 0), "include"),
    ({"tools": [{"type": "function", "name": "f"}]}, ("tools", 0, "type"), "tools[0].type"),
]

_MESSAGE = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
_IMAGE = {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}
_ASSISTANT = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}
_CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}

# (an input item, path within it, the param's tail) for every route that takes items.
_ITEM_FIELDS: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
    (_MESSAGE, ("type",), "type"),
    (_MESSAGE, ("role",), "role"),
    (_MESSAGE, ("status",), "status"),
    (_MESSAGE, ("content", 0, "type"), "content[0].type"),
    (_ASSISTANT, ("content", 0, "type"), "content[0].type"),
    (_ASSISTANT, ("status",), "status"),
    (_IMAGE, ("content", 0, "detail"), "content[0].detail"),
    (_CALL, ("status",), "status"),
    (_CALL, ("name",), "name"),
]


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def _replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    target: Any = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


def _refused(answer: httpx.Response, param: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"], error


async def _nothing_stored(db: AsyncEngine, fake_upstream: FakeOpenRouter) -> None:
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []


@pytest.mark.parametrize(("extra", "path", "param"), _TURN_FIELDS, ids=[p for *_, p in _TURN_FIELDS])
async def test_a_turn_parameter_of_the_wrong_json_type_is_a_400_naming_it(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    extra: dict[str, Any],
    path: tuple[Any, ...],
    param: str,
) -> None:
    body = {"model": MODEL, "input": "hi", **extra}
    for value in NOT_A_STRING:
        for flags in ({}, {"stream": True}, {"background": True}):
            _refused(await alice.http.post("/v1/responses", json={**_replaced(body, path, value), **flags}), param)
    await _nothing_stored(db, fake_upstream)


@pytest.mark.parametrize(("item", "path", "tail"), _ITEM_FIELDS, ids=[f"{i['type']}.{t}" for i, _, t in _ITEM_FIELDS])
async def test_an_item_field_of_the_wrong_json_type_is_a_400_naming_it_on_every_route_that_takes_items(
    alice: Tenant,
    admin: httpx.AsyncClient,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    item: dict[str, Any],
    path: tuple[Any, ...],
    tail: str,
) -> None:
    conversation = await new_conversation(alice.http)
    for value in NOT_A_STRING:
        bad = _replaced(item, path, value)
        for route in ("/v1/responses", "/v1/responses/input_tokens", "/v1/responses/compact"):
            answer = await alice.http.post(route, json={"model": MODEL, "input": [_MESSAGE, bad]})
            _refused(answer, f"input[1].{tail}")
        _refused(await alice.http.post("/v1/conversations", json={"items": [_MESSAGE, bad]}), f"items[1].{tail}")
        answer = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [_MESSAGE, bad]})
        _refused(answer, f"items[1].{tail}")
        if tail == "content[0].detail":
            continue  # an import keeps a part's fields as the backup holds them (items._check_parts)
        lines = b'{"object": "conversation"}\n' + httpx.Response(200, json=bad).content + b"\n"
        headers = {"Content-Type": "application/jsonl"}
        for client, route in ((alice.http, "/v1/conversations/import"), (admin, "/admin/tenants/alice/import")):
            answer = await client.post(route, content=lines, headers=headers)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["type"] == "invalid_request_error", answer.text
    await _nothing_stored(db, fake_upstream)
    assert [c["id"] for c in await rows(db, "SELECT id FROM conversation")] == [conversation]


async def test_a_webhook_event_of_the_wrong_json_type_is_a_400_naming_it(admin: httpx.AsyncClient) -> None:
    for value in NOT_A_STRING:
        answer = await admin.post(
            "/admin/tenants/alice/webhooks", json={"url": "https://hooks.example.com/x", "events": [value]}
        )
        _refused(answer, "events")
