"""Upstream failures: OpenRouter's error becomes OpenAI's envelope with the right status, the turn is stored as
failed with its input, nothing is appended, and the OpenRouter key never leaks."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, free_port, text_response
from tests.turn_support import MODEL, assistant, new_conversation, rows, turn, user, without_ids

SECRET = "sk-or-test-secret-key"


def _openrouter_error(status: int, message: str, **metadata: Any) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "metadata": metadata or None}, "user_id": None}


async def _assert_failed_turn_kept(
    tenant: Tenant, db: AsyncEngine, conv: str, *, error_code: str, question: str
) -> dict[str, Any]:
    (response,) = await rows(db, "SELECT id, status, error, conversation_id FROM response")
    assert response["status"] == "failed"
    assert response["error"]["code"] == error_code
    assert response["conversation_id"] == conv
    got = await tenant.http.get(f"/v1/responses/{response['id']}")
    assert got.status_code == 200
    assert got.json()["status"] == "failed"
    assert got.json()["error"] == response["error"]
    assert got.json()["output"] == []
    inputs = (await tenant.http.get(f"/v1/responses/{response['id']}/input_items")).json()["data"]
    assert without_ids(inputs) == [user(question)]
    assert (await tenant.http.get(f"/v1/conversations/{conv}/items")).json()["data"] == []
    (conv_row,) = await rows(
        db, "SELECT item_count, next_position, turn_response_id FROM conversation WHERE id = :c", c=conv
    )
    assert conv_row == {"item_count": 0, "next_position": 0, "turn_response_id": None}
    return response


async def test_upstream_4xx_keeps_its_status_and_the_failed_turn_is_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(_openrouter_error(400, "Invalid model 'nope'"), status=400)
    answer = await alice.http.post("/v1/responses", json={"model": "nope", "input": "Q1", "conversation": conv})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "Invalid model 'nope'" in error["message"]
    assert error["code"] == "upstream_bad_request"
    assert len(fake_upstream.requests) == 1  # a 400 is not retried
    await _assert_failed_turn_kept(alice, db, conv, error_code="invalid_prompt", question="Q1")

    # The failed turn's input is not history: the next turn sends only its own input.
    fake_upstream.reply_json(text_response("A2", msg_id="msg_after"))
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[1] == [user("Q2")]
    await turn(alice.http, "Q3", conversation=conv)
    assert fake_upstream.inputs[2] == [user("Q2"), assistant("A2", "msg_after"), user("Q3")]


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (402, "insufficient_credits", "invalid_request_error"),
        (403, "upstream_forbidden", "permission_error"),
        (404, "upstream_not_found", "invalid_request_error"),
        (422, "upstream_unprocessable", "invalid_request_error"),
    ],
)
async def test_upstream_client_errors_keep_their_status(
    alice: Tenant, fake_upstream: FakeOpenRouter, status: int, code: str, error_type: str
) -> None:
    fake_upstream.reply_json(_openrouter_error(status, f"upstream said {status}"), status=status)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == status
    assert answer.json()["error"] == {
        "message": f"OpenRouter: upstream said {status}",
        "type": error_type,
        "param": None,
        "code": code,
    }
    assert len(fake_upstream.requests) == 1


async def test_openrouter_refusing_the_services_key_is_a_502_not_the_clients_401(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.reply_json(_openrouter_error(401, "No auth credentials found"), status=401)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == 502
    assert answer.json()["error"] == {
        "message": "OpenRouter: No auth credentials found",
        "type": "server_error",
        "param": None,
        "code": "upstream_authentication_failed",
    }


async def test_upstream_string_error_code_is_kept(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(
        {"error": {"code": "invalid_prompt", "message": "Missing required parameter: 'model'."}}, status=400
    )
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_prompt"


async def test_upstream_429_keeps_status_and_retry_after_after_retries(
    start_server: Any, make_tenant: Any, fake_upstream: FakeOpenRouter
) -> None:
    live: LiveServer = start_server(upstream_max_attempts=2)
    tenant: Tenant = await make_tenant("limited", live=live)
    for _ in range(2):
        fake_upstream.reply_json(_openrouter_error(429, "Rate limited"), status=429, headers={"Retry-After": "0"})
    answer = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == 429
    assert answer.json()["error"]["type"] == "rate_limit_error"
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(fake_upstream.requests) == 2


async def test_upstream_5xx_becomes_502_after_retries_and_the_turn_is_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    for _ in range(3):
        fake_upstream.reply_json(_openrouter_error(503, "No provider available"), status=503)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q1", "conversation": conv})
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_error"
    assert "No provider available" in error["message"]
    assert len(fake_upstream.requests) == 3
    assert fake_upstream.inputs == [[user("Q1")]] * 3
    await _assert_failed_turn_kept(alice, db, conv, error_code="server_error", question="Q1")


async def test_upstream_5xx_then_success_is_retried_transparently(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.reply_json(_openrouter_error(500, "Internal"), status=500)
    fake_upstream.reply_json(text_response("ok", msg_id="msg_retry"))
    body = await turn(alice.http, "Q", conversation=conv)
    assert body["status"] == "completed"
    assert fake_upstream.inputs == [[user("Q")], [user("Q")]]
    assert len(await rows(db, "SELECT id FROM item WHERE conversation_id = :c", c=conv)) == 2


async def test_upstream_answer_that_is_not_json_becomes_502(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="json", body="<html>oops</html>"))  # a JSON string, not an object
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == 502
    assert answer.json()["error"]["type"] == "server_error"
    # Tried once: a retry is the client's to make (upstream failures the service retried say not to).
    assert "x-should-retry" not in answer.headers


async def test_connection_failure_becomes_502(start_server: Any, make_tenant: Any, db: AsyncEngine) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api/v1"
    live: LiveServer = start_server(openrouter_base_url=closed, upstream_max_attempts=2)
    tenant: Tenant = await make_tenant("offline", live=live)
    conv = await new_conversation(tenant.http)
    answer = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "Q", "conversation": conv})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    await _assert_failed_turn_kept(tenant, db, conv, error_code="server_error", question="Q")


async def test_upstream_timeout_becomes_504(
    start_server: Any, make_tenant: Any, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    live: LiveServer = start_server(upstream_total_timeout=0.5)
    tenant: Tenant = await make_tenant("patient", live=live)
    conv = await new_conversation(tenant.http)
    fake_upstream.enqueue(Reply(kind="stall", delay=3.0))
    answer = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "Q", "conversation": conv})
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    assert answer.json()["error"]["type"] == "server_error"
    assert answer.headers["x-should-retry"] == "false"
    await _assert_failed_turn_kept(tenant, db, conv, error_code="server_error", question="Q")


async def test_upstream_gets_the_key_and_attribution_headers(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    await turn(alice.http, "Q")
    headers = fake_upstream.requests[0].headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["http-referer"] == "https://example.test/app"
    assert headers["x-openrouter-title"] == "Conversation store tests"
    assert headers["content-type"] == "application/json"
    assert fake_upstream.requests[0].path == "/api/v1/responses"
    assert fake_upstream.requests[0].method == "POST"
    # The client's own key is ours, never forwarded.
    assert alice.key not in fake_upstream.requests[0].raw.decode()
    assert alice.key not in str(headers)


async def test_the_openrouter_key_never_appears_in_bodies_or_logs(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conv = await new_conversation(alice.http)
    # An upstream that echoes the key back in its error message (as some proxies do).
    fake_upstream.reply_json(_openrouter_error(401, f"Invalid key {SECRET} for this account"), status=401)
    failed = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q", "conversation": conv})
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_authentication_failed"
    for _ in range(3):
        fake_upstream.reply_json(_openrouter_error(500, f"key={SECRET}"), status=500)
    failed_5xx = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q2", "conversation": conv})
    assert failed_5xx.status_code == 502
    ok = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q3", "conversation": conv})
    assert ok.status_code == 200

    bodies = [failed.text, failed_5xx.text, ok.text]
    for row in await rows(db, "SELECT id, error::text AS error FROM response"):
        bodies.append(row["error"] or "")
        bodies.append((await alice.http.get(f"/v1/responses/{row['id']}")).text)
        bodies.append((await alice.http.get(f"/v1/responses/{row['id']}/input_items")).text)
    bodies.append((await alice.http.get(f"/v1/conversations/{conv}/items")).text)
    assert len(bodies) == 13
    for text_ in bodies:
        assert SECRET not in text_
    assert "Invalid key" in failed.text  # the message itself still reaches the client
    for record in caplog.records:
        assert SECRET not in record.getMessage()


@pytest.mark.parametrize(("code", "status"), [(400, 400), (429, 429), (503, 502), ("weird", 502), (None, 502)])
async def test_error_body_under_a_success_status_is_still_an_error(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, code: Any, status: int
) -> None:
    fake_upstream.reply_json({"error": {"code": code, "message": "Something broke"}}, status=200)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    assert answer.status_code == status, answer.text
    assert "Something broke" in answer.json()["error"]["message"]
    (row,) = await rows(db, "SELECT status FROM response")
    assert row["status"] == "failed"


async def test_the_key_quoted_in_an_in_band_failure_is_redacted(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    # HTTP 200 with a failed Response whose error quotes the key, non-streamed and streamed.
    failed_result = {
        **text_response(""),
        "status": "failed",
        "output": [],
        "error": {"code": "server_error", "message": f"upstream rejected key {SECRET}"},
    }
    fake_upstream.reply_json(failed_result)
    plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q"})
    fake_upstream.enqueue(
        Reply(
            kind="sse",
            events=[
                {"type": "response.created", "response": {**failed_result, "status": "in_progress", "error": None}},
                {"type": "response.failed", "response": failed_result},
            ],
        )
    )
    streamed = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q", "stream": True})
    assert plain.status_code == 200 and streamed.status_code == 200
    assert plain.json()["status"] == "failed"
    assert "[redacted]" in plain.json()["error"]["message"]
    assert "response.failed" in streamed.text
    stored = await rows(db, "SELECT status, error::text AS error FROM response ORDER BY created_at")
    assert [row["status"] for row in stored] == ["failed", "failed"]
    for text_ in [plain.text, streamed.text, *(row["error"] for row in stored)]:
        assert SECRET not in text_
