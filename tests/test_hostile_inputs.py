"""Inputs an attacker sends that used to answer 500: JSON nested deeper than anything real, U+0000 in a path
or a query, times outside PostgreSQL's range, forged cursors, an upstream's absurd Retry-After or negative cost.
Each gets a 4xx in OpenAI's envelope and leaves nothing stored."""

from __future__ import annotations

import base64
import gzip
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.jsonbody import MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, MAX_JSON_VALUES
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import SMALL_WINDOW_MODEL, FakeOpenRouter, text_response
from tests.turn_support import MODEL, new_conversation, rows


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def _error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 980, 5000])
async def test_json_nested_too_deep_is_a_400_naming_the_field_on_every_json_route(
    alice: Tenant, admin: httpx.AsyncClient, fake_upstream: FakeOpenRouter, db: AsyncEngine, depth: int
) -> None:
    conversation_id = await new_conversation(alice.http)
    routes = [
        (alice.http, "/v1/responses", b'{"model": "m", "input": %s}', "input"),
        (alice.http, "/v1/conversations", b'{"items": %s}', "items"),
        (alice.http, f"/v1/conversations/{conversation_id}", b'{"metadata": %s}', "metadata"),
        (alice.http, f"/v1/conversations/{conversation_id}/items", b'{"items": %s}', "items"),
        (admin, "/admin/api-keys", b'{"name": "n", "tenant": %s}', "tenant"),
    ]
    for client, path, template, param in routes:
        for headers in ({}, {"Idempotency-Key": f"deep-{depth}-{path}"}):
            answer = await client.post(
                path, content=template % _nested(depth), headers={"content-type": "application/json", **headers}
            )
            error = _error(answer, 400)
            assert error["code"] == "json_too_deep", (path, error)
            assert error["type"] == "invalid_request_error"
            if depth < 1000:  # msgspec itself refuses deeper bodies, before the field is known
                assert error["param"] == param, error
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []
    # Refused before any effect, so the keys were released: nothing kept for them.
    assert await rows(db, "SELECT key FROM idempotency_key") == []


async def test_json_nested_within_the_limit_is_accepted(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_JSON_DEPTH - 8):  # tools[0].parameters... nests 4 levels before the schema starts
        schema = {"type": "array", "items": schema}
    tools = [{"type": "function", "name": "f", "parameters": schema}]
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "tools": tools})
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[0].body["tools"] == tools


async def test_u0000_in_a_path_id_answers_404_like_an_unknown_id(
    alice: Tenant, admin: httpx.AsyncClient, fake_upstream: FakeOpenRouter
) -> None:
    probes = [
        (alice.http, "GET", "/v1/responses/resp_%00?stream=true"),
        (alice.http, "GET", "/v1/responses/resp_%00"),
        (alice.http, "DELETE", "/v1/responses/resp_%00"),
        (alice.http, "POST", "/v1/responses/resp_%00/cancel"),
        (alice.http, "GET", "/v1/responses/resp_%00/input_items"),
        (alice.http, "GET", "/v1/conversations/conv_%00"),
        (alice.http, "GET", "/v1/conversations/conv_%00/items/msg_%00"),
        (admin, "GET", "/admin/conversations/conv_%00"),
        (admin, "DELETE", "/admin/conversations/conv_%00"),
        (admin, "DELETE", "/admin/api-keys/key_%00"),
    ]
    for client, method, path in probes:
        error = _error(await client.request(method, path), 404)
        assert error["code"] == "not_found", (path, error)
    assert fake_upstream.requests == []


async def test_an_encoded_slash_in_an_id_answers_404_rather_than_reaching_another_route(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation_id = await new_conversation(alice.http)
    stored = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    response_id = stored.json()["id"]
    probes = [
        ("POST", "/v1/conversations/%2F", {"metadata": {"a": "b"}}),  # decoded, it would be a create
        ("POST", "/v1/conversations/%2f", {"metadata": {"a": "b"}}),
        ("GET", f"/v1/conversations/{conversation_id}%2Fitems", None),
        ("POST", f"/v1/responses/{response_id}%2Fcancel", None),
        ("GET", f"/v1/responses/{response_id}%2Finput_items", None),
    ]
    for method, path, body in probes:
        error = _error(await alice.http.request(method, path, json=body), 404)
        assert error["code"] == "not_found", (path, error)
    assert await rows(db, "SELECT id FROM conversation") == [{"id": conversation_id}]
    # A model id holds a slash: encoded, it still names the model.
    model = await alice.http.get("/v1/models/" + SMALL_WINDOW_MODEL.replace("/", "%2F"))
    assert model.status_code == 200, model.text
    assert model.json()["id"] == SMALL_WINDOW_MODEL


async def test_u0000_in_a_query_value_is_a_400_naming_it(alice: Tenant, admin: httpx.AsyncClient) -> None:
    conversation_id = await new_conversation(alice.http)
    error = _error(await alice.http.get(f"/v1/conversations/{conversation_id}/items?after=msg_%00"), 400)
    assert error["param"] == "after"
    error = _error(await admin.get("/admin/responses?conversation=conv_%00"), 400)
    assert error["param"] == "conversation"


async def test_a_compressed_body_is_a_415_saying_so(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """It was read as it came: 400 "not valid UTF-8", which does not say what to change."""
    body = gzip.compress(msgspec.json.encode({"model": "openai/gpt-4o-mini", "input": "hi"}))
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    calls = len(fake_upstream.requests)
    refused = await alice.http.post("/v1/responses", content=body, headers=headers)
    error = _error(refused, 415)
    assert error["code"] == "unsupported_content_encoding" and "'gzip'" in error["message"]
    assert refused.headers["accept-encoding"] == "identity"
    assert len(fake_upstream.requests) == calls
    for coding in ("identity", "identity, identity"):
        plain = {"Content-Encoding": coding, "Content-Type": "application/json"}
        created = await alice.http.post("/v1/conversations", content=b"{}", headers=plain)
        assert created.status_code == 200, created.text
    mixed = {"Content-Encoding": "identity, gzip", "Content-Type": "application/json"}
    assert (await alice.http.post("/v1/conversations", content=b"{}", headers=mixed)).status_code == 415


@pytest.mark.parametrize(
    "value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1e300", "-99999999999999"]
)
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/admin/conversations", "created_after"),
        ("/admin/conversations", "updated_before"),
        ("/admin/responses", "created_before"),
        ("/admin/stats", "created_after"),
    ],
)
async def test_admin_times_outside_postgresql_range_are_a_400(
    admin: httpx.AsyncClient, path: str, name: str, value: str
) -> None:
    error = _error(await admin.get(path, params={name: value}), 400)
    assert error["param"] == name


@pytest.mark.parametrize(
    "forged",
    [
        ["conversations", "0001-01-01T00:00:00+14:00", "conv_x"],
        ["conversations", "9999-12-31T23:59:59-14:00", "conv_x"],
        ["conversations", "2026-01-01T00:00:00+00:00", "conv_\u0000"],
        ["responses", "2026-01-01T00:00:00+00:00", "resp_\u0000"],
    ],
)
async def test_forged_admin_cursors_are_a_400(admin: httpx.AsyncClient, forged: list[str]) -> None:
    cursor = base64.urlsafe_b64encode(msgspec.json.encode(forged)).decode().rstrip("=")
    error = _error(await admin.get(f"/admin/{forged[0]}", params={"cursor": cursor}), 400)
    assert (error["param"], error["code"]) == ("cursor", "invalid_cursor")


def _rate_limited() -> dict[str, Any]:
    return {"error": {"code": 429, "message": "slow down"}}


async def test_an_infinite_upstream_retry_after_is_ignored(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    for _ in range(3):
        fake_upstream.reply_json(_rate_limited(), status=429, headers={"Retry-After": "inf"})
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    error = _error(answer, 429)
    assert error["code"] == "rate_limit_exceeded"
    assert "retry-after" not in answer.headers
    assert len(fake_upstream.requests) == 3
    stored = await rows(db, "SELECT status, error FROM response")
    assert [(row["status"], row["error"]["code"]) for row in stored] == [("failed", "rate_limit_exceeded")]


async def test_a_huge_upstream_retry_after_is_capped_for_the_client(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    for _ in range(3):
        fake_upstream.reply_json(_rate_limited(), status=429, headers={"Retry-After": "1e300"})
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    _error(answer, 429)
    assert answer.headers["retry-after"] == "86400"


@pytest.mark.parametrize("cost", [-5, -0.001])
async def test_a_negative_upstream_cost_is_neither_stored_nor_summed(
    alice: Tenant, admin: httpx.AsyncClient, fake_upstream: FakeOpenRouter, db: AsyncEngine, cost: float
) -> None:
    reply = text_response("ok")
    reply["usage"]["cost"] = cost
    fake_upstream.reply_json(reply)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 200, answer.text
    assert "cost" not in answer.json()["usage"]
    stored = await rows(db, "SELECT cost, usage FROM response")
    assert [(row["cost"], "cost" in row["usage"]) for row in stored] == [(0, False)]
    stats = (await admin.get("/admin/stats")).json()
    assert stats["total"]["usage"]["cost"] == 0


async def test_an_answer_of_a_megabyte_of_distinct_words_is_stored_and_searchable_by_its_start(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    # Its full text would make a search vector over PostgreSQL's 1 MB limit, failing the whole turn's store.
    words = " ".join(f"lexeme{index}" for index in range(120_000))
    fake_upstream.reply_json(text_response(words, msg_id="msg_huge"))
    conversation = await new_conversation(alice.http)
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "talk", "conversation": conversation}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    [stored] = await rows(db, "SELECT body, length(text_content) AS searched FROM item WHERE id = 'msg_huge'")
    assert msgspec.json.decode(stored["body"])["content"][0]["text"] == words  # the item itself is whole
    assert stored["searched"] == 100_000
    found = await admin.get("/admin/conversations", params={"q": "lexeme42"})
    assert [row["id"] for row in found.json()["data"]] == [conversation]


def _stored_deep_message(depth: int) -> str:
    """A user message nested `depth` levels deep in all, as items were stored before bodies had a depth limit."""
    extra = "[" * (depth - 3) + "]" * (depth - 3)
    return '{"type":"message","role":"user","content":[{"type":"input_text","text":"deep","extra":' + extra + "}]}"


async def test_a_reference_to_an_item_stored_nested_too_deep_is_a_400_naming_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "deep, later"}])
    [item] = await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=conversation)
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE item SET body = :b WHERE id = :i"), {"b": _stored_deep_message(969), "i": item["id"]}
        )
    reference = [{"role": "user", "content": "first"}, {"type": "item_reference", "id": item["id"]}]
    target = await new_conversation(alice.http)
    attempts = [
        ("/v1/responses", {"model": MODEL, "input": reference}, "input[1].id"),
        ("/v1/responses", {"model": MODEL, "input": reference, "conversation": target}, "input[1].id"),
        ("/v1/responses", {"model": MODEL, "input": reference, "store": False}, "input[1].id"),
        (f"/v1/conversations/{target}/items", {"items": reference}, "items[1].id"),
        ("/v1/conversations", {"items": reference}, "items[1].id"),
        ("/v1/responses/input_tokens", {"model": MODEL, "input": reference}, "input[1].id"),
    ]
    for path, body, param in attempts:
        error = _error(await alice.http.post(path, json=body), 400)
        assert (error["code"], error["param"]) == ("json_too_deep", param), (path, error)
        assert item["id"] in error["message"]
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=target) == []
    # The item itself is still there, exactly as stored, and still listed.
    [kept] = await rows(db, "SELECT body FROM item WHERE id = :i", i=item["id"])
    assert kept["body"] == _stored_deep_message(969)


async def test_a_reference_to_an_item_nested_within_the_limit_still_works(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "shallow"}])
    [item] = await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=conversation)
    within = _stored_deep_message(MAX_JSON_DEPTH)
    async with db.begin() as conn:
        await conn.execute(text("UPDATE item SET body = :b WHERE id = :i"), {"b": within, "i": item["id"]})
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [{"type": "item_reference", "id": item["id"]}]}
    )
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[0].raw.count(within.encode()) == 1  # sent verbatim


async def test_a_model_or_item_id_too_long_for_an_index_is_a_400_before_anything_is_claimed(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Random text of a few kB does not fit a b-tree entry: stored in an indexed column (a response's model, a
    conversation's last model, an item's id) it failed the turn's finish after the upstream call, and left the
    conversation claimed until TURN_LOCK_TTL."""
    conversation = await new_conversation(alice.http)
    long = base64.b32encode(bytes(range(256)) * 8).decode()  # 3,280 characters that do not compress
    turns = [
        ({"model": long, "input": "x", "conversation": conversation}, "model"),
        (
            {"model": MODEL, "input": [{"role": "user", "content": "x", "id": long}], "conversation": conversation},
            "input[0].id",
        ),
        ({"model": long, "input": "x", "stream": True}, "model"),
    ]
    for body, param in turns:
        assert _error(await alice.http.post("/v1/responses", json=body), 400)["param"] == param
    compact = await alice.http.post("/v1/responses/compact", json={"model": long, "conversation": conversation})
    assert _error(compact, 400)["param"] == "model"
    counted = await alice.http.post("/v1/responses/input_tokens", json={"model": long, "input": "x"})
    assert _error(counted, 400)["param"] == "model"
    appended = await alice.http.post(
        f"/v1/conversations/{conversation}/items", json={"items": [{"role": "user", "content": "x", "id": long}]}
    )
    assert _error(appended, 400)["param"] == "items[0].id"
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    fake_upstream.reply_json(text_response("Still open."))
    answered = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "conversation": conversation})
    assert answered.status_code == 200, answered.text


async def test_an_item_id_the_items_api_could_not_address_is_a_400(alice: Tenant, db: AsyncEngine) -> None:
    """An item is read and deleted at /v1/conversations/{id}/items/{item_id}: an id holding '/' (or a dot
    segment) was stored, and could then never be read or deleted one at a time."""
    conversation = await new_conversation(alice.http)
    for bad in ["a/b", "/", ".", ".."]:
        appended = await alice.http.post(
            f"/v1/conversations/{conversation}/items", json={"items": [{"role": "user", "content": "x", "id": bad}]}
        )
        assert _error(appended, 400)["param"] == "items[0].id", bad
        turn = {"model": MODEL, "input": [{"role": "user", "content": "x", "id": bad}], "conversation": conversation}
        assert _error(await alice.http.post("/v1/responses", json=turn), 400)["param"] == "input[0].id", bad
    assert await rows(db, "SELECT id FROM item") == []
    fine = "a.b?c#d e:f"
    appended = await alice.http.post(
        f"/v1/conversations/{conversation}/items", json={"items": [{"role": "user", "content": "x", "id": fine}]}
    )
    assert appended.status_code == 200, appended.text
    shown = await alice.http.get(f"/v1/conversations/{conversation}/items/{quote(fine, safe='')}")
    assert shown.status_code == 200 and shown.json()["id"] == fine
    deleted = await alice.http.delete(f"/v1/conversations/{conversation}/items/{quote(fine, safe='')}")
    assert deleted.status_code == 200, deleted.text


async def test_a_body_of_more_arrays_and_objects_than_any_request_holds_is_a_400_before_it_is_decoded(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Ten million empty arrays in a pass-through parameter held the event loop for seconds and took a gigabyte,
    and every read of the stored parameters as long again. Brackets inside strings are text, not structure."""
    many = b'{"model":"m","input":"x","provider":[' + b"[]," * (MAX_JSON_CONTAINERS + 1) + b"[]]}"
    refused = await alice.http.post("/v1/responses", content=many, headers={"content-type": "application/json"})
    assert _error(refused, 400)["code"] == "json_too_complex"
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    fake_upstream.reply_json(text_response("Brackets are text here."))
    text_ = "[{" * (MAX_JSON_CONTAINERS + 1)
    answered = await alice.http.post("/v1/responses", json={"model": MODEL, "input": text_})
    assert answered.status_code == 200, answered.text


async def test_a_body_of_more_keys_or_elements_than_any_request_holds_is_a_400(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A flat object of 3 million keys in a pass-through parameter (31 MB, under the body limit) held the event
    loop for seconds, and once stored, every GET of the response as long again; so did an array of millions of
    numbers. Commas and colons inside strings are text, not structure."""
    conversation = await new_conversation(alice.http)
    keys = b",".join(b'"k%d":1' % n for n in range(MAX_JSON_VALUES + 10))
    numbers = b",".join(b"%d" % n for n in range(MAX_JSON_VALUES + 10))
    for many in (b'{"k":{' + keys + b"}}", b'{"k":[' + numbers + b"]}"):
        turn = many[:-1] + b',"model":"m","input":"x"}'
        refused = await alice.http.post("/v1/responses", content=turn, headers={"content-type": "application/json"})
        assert _error(refused, 400)["code"] == "json_too_complex"
        item = b'{"items":[{"type":"message","role":"user","content":"x","extra":' + many + b"}]}"
        refused = await alice.http.post(
            f"/v1/conversations/{conversation}/items", content=item, headers={"content-type": "application/json"}
        )
        assert _error(refused, 400)["code"] == "json_too_complex"
        header = b'{"object":"conversation","metadata":{}}\n'
        line = b'{"type":"message","role":"user","content":"x","extra":' + many + b"}\n"
        refused = await alice.http.post(
            "/v1/conversations/import", content=header + line, headers={"content-type": "application/jsonl"}
        )
        assert _error(refused, 400)["message"].startswith("Line 2: holds more than"), refused.text
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []
    # Just under the limit, keys are taken (each is one member, not two).
    fake_upstream.reply_json(text_response("Many keys."))
    under = b",".join(b'"k%d":1' % n for n in range(MAX_JSON_VALUES - 10))
    taken = b'{"provider":{' + under + b'},"model":"' + MODEL.encode() + b'","input":"x","store":false}'
    answered = await alice.http.post("/v1/responses", content=taken, headers={"content-type": "application/json"})
    assert answered.status_code == 200, answered.text
    fake_upstream.reply_json(text_response("Commas are text here."))
    text_ = '"a":1, "b": 2, ' * (MAX_JSON_VALUES // 2)
    answered = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": text_, "conversation": conversation}
    )
    assert answered.status_code == 200, answered.text


async def test_an_error_message_does_not_echo_an_id_of_any_length(alice: Tenant) -> None:
    conversation = await new_conversation(alice.http)
    long = "msg_" + "x" * 20_000
    answer = await alice.http.get(f"/v1/conversations/{conversation}/items", params={"after": long})
    error = _error(answer, 400)
    assert error["param"] == "after" and len(error["message"]) <= 2000 and error["message"].endswith("…")
