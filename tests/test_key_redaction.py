"""Our OpenRouter key never reaches a tenant through an upstream that echoes it: not in an error's code or
message, not JSON-escaped in a body, not split across stream deltas, and not in what is stored (items, the
event log, the response's error)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.observability.logs import JsonFormatter, TextFormatter
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.stream_support import parse_sse, stored_logs
from tests.turn_support import MODEL, rows

SECRET = "sk-or-test-secret-key"  # tests/conftest.py's OPENROUTER_API_KEY
SECRET_PART = "test-secret"  # what must never be seen, whatever part of the key is cut off


async def _nothing_stored_holds_the_key(db: AsyncEngine) -> None:
    stored = await rows(db, "SELECT error::text AS error, usage::text AS usage FROM response")
    stored += await rows(db, "SELECT body AS item FROM item")
    stored += [{"events": log} for log in (await stored_logs(db)).values()]
    assert stored
    for row in stored:
        for value in row.values():
            assert value is None or SECRET_PART not in value, row


async def test_an_upstream_error_code_echoing_the_key_is_redacted(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json({"error": {"code": SECRET, "message": f"bad key {SECRET}"}}, status=400)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 400
    assert SECRET_PART not in answer.text
    assert answer.json()["error"]["code"] == "[redacted]"
    await _nothing_stored_holds_the_key(db)


async def test_a_json_escaped_key_in_a_body_is_redacted(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    body = json.dumps(text_response("KEY_HERE")).replace("KEY_HERE", f"the key is {escaped}").encode()
    assert SECRET_PART.encode() not in body
    fake_upstream.reply_json(body)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"][0]["content"][0]["text"] == "the key is [redacted]"
    await _nothing_stored_holds_the_key(db)


def _split_deltas(text: str, pieces: list[str]) -> list[Any]:
    events: list[Any] = text_stream_events(text, chunks=1)
    [index] = [i for i, e in enumerate(events) if e["type"] == "response.output_text.delta"]
    template = events[index]
    events[index : index + 1] = [{**template, "delta": piece} for piece in pieces]
    return events


async def test_a_key_split_across_stream_deltas_is_redacted(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    text = f"before {SECRET} after, and yes"
    pieces = ["before sk-or-te", "st-secr", "et-key after, and yes"]
    assert "".join(pieces) == text
    events = _split_deltas(text, pieces)
    # One more escaped inside a delta's JSON, as raw SSE.
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    events.insert(
        -4,
        'data: {"type": "response.output_text.delta", "item_id": "msg_stream_1", "output_index": 0, '
        f'"content_index": 0, "delta": " {escaped}", "logprobs": []}}\n\n',
    )
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    async with alice.http.stream(
        "POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True}
    ) as answer:
        assert answer.status_code == 200
        raw = (await answer.aread()).decode()
    assert SECRET_PART not in raw
    relayed = [event for _, event in parse_sse(raw)]
    deltas = "".join(e["delta"] for e in relayed if e["type"] == "response.output_text.delta")
    assert deltas == "before [redacted] after, and yes [redacted]"
    await _nothing_stored_holds_the_key(db)


async def test_text_that_only_looks_like_the_keys_start_flows_unchanged(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    pieces = ["it is", " sk-or", "-something else"]
    fake_upstream.enqueue(Reply(kind="sse", events=_split_deltas("".join(pieces), pieces)))
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "stream": True})
    relayed = [event for _, event in parse_sse(answer.text)]
    deltas = [e["delta"] for e in relayed if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "".join(pieces)
    # A tail that could start the key ("s", then "sk-or") waits for the next delta; the rest flows as it came.
    assert deltas == ["it i", "s ", "sk-or-something else"]


async def test_a_key_too_short_to_be_openrouters_does_not_corrupt_what_is_stored(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A one-letter OPENROUTER_API_KEY (a test's, a demo's) used to be replaced everywhere: every x of every
    answer, JSON keys included ("output_te[redacted]t"), stored and sent upstream on later turns."""
    live = start_server(openrouter_api_key="x")
    carol = await make_tenant("carol", live=live)
    fake_upstream.reply_json(text_response("six boxes of wax", msg_id="msg_x"))
    answer = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "how many boxes?"})
    assert answer.status_code == 200, answer.text
    part = answer.json()["output"][0]["content"][0]
    assert (part["type"], part["text"]) == ("output_text", "six boxes of wax")
    [stored] = await rows(db, "SELECT body FROM item WHERE id = 'msg_x'")
    assert json.loads(stored["body"])["content"][0]["text"] == "six boxes of wax"
    assert "[redacted]" not in stored["body"]


async def test_a_key_a_client_put_in_the_url_is_not_written_to_the_access_log(
    alice: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    answer = await alice.http.get(f"/v1/conversations/{alice.key}")
    assert answer.status_code == 404
    lines = [r for r in caplog.records if r.name == "service.access"]
    assert lines, "the request was logged"
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in lines)
    assert alice.key not in logged and alice.key[len("sk-cs-") :] not in logged
    assert "/v1/conversations/sk-[redacted]" in logged


async def test_the_service_secrets_in_a_url_are_not_written_to_the_access_log(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """ADMIN_API_KEY may be any string of 16 characters or more, so the key pattern missed it: an operator's
    request naming it in the path was logged with it."""
    caplog.set_level(logging.INFO, logger="service.access")
    admin_key, openrouter_key = server.settings.admin_api_key, server.settings.openrouter_api_key
    assert admin_key is not None and openrouter_key is not None and not admin_key.startswith("sk-")
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        assert (await admin.delete(f"/admin/api-keys/{admin_key}")).status_code == 404
        assert (await admin.get(f"/admin/{openrouter_key}")).status_code == 404
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records)
    assert "/admin/api-keys/[redacted]" in logged
    assert admin_key not in logged and openrouter_key not in logged


async def test_a_key_or_a_line_break_a_client_put_in_a_model_name_or_request_id_is_not_logged(
    alice: Tenant, fake_upstream: FakeOpenRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's key sent as its X-Request-Id, or in its model name, was logged as sent; and a line break in a
    model name started a line of its own in the text format, one that looked like the service's."""
    caplog.set_level(logging.INFO, logger="service.access")
    forged = "\n2026-12-07 14:20:10 INFO service.access POST /admin/api-keys 200 tenant=admin"
    # Refused upstream, as such a model is: the line names the model the client asked for.
    fake_upstream.reply_json({"error": {"code": 400, "message": "not a valid model ID"}}, status=400)
    answer = await alice.http.post(
        "/v1/responses",
        json={"model": f"demo/x{forged} {alice.key}", "input": "x", "store": False},
        headers={"X-Request-Id": alice.key},
    )
    assert answer.status_code == 400, answer.text
    assert answer.headers["x-request-id"] not in (alice.key, "")
    (line,) = [r for r in caplog.records if r.name == "service.access" and r.getMessage().startswith("POST")]
    for formatter in (JsonFormatter(), TextFormatter()):
        formatted = formatter.format(line)
        assert alice.key[len("sk-cs-") :] not in formatted, formatted
        assert "\n" not in formatted and "sk-[redacted]" in formatted, formatted
    assert json.loads(JsonFormatter().format(line))["model"].startswith(f"demo/x{forged} ")
