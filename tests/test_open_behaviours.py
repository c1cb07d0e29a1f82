"""Where OpenAI leaves behaviour open and gateways differ, the choices the README documents ("Where OpenAI leaves
behaviour open"), each answered in OpenAI's error envelope with nothing stored or sent upstream."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.openai_spec import check
from tests.turn_support import MODEL, new_conversation, rows, turn


async def test_store_false_with_a_conversation_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "conversation": conv, "store": False}
    )
    assert answer.status_code == 400
    check("ErrorResponse", answer.json())
    assert answer.json()["error"]["param"] == "store"
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []


async def test_a_malformed_id_is_not_found_like_a_missing_one(alice: Tenant) -> None:
    for path in ("/v1/responses/not-an-id", "/v1/responses/resp_" + "9" * 300, "/v1/conversations/xyz"):
        answer = await alice.http.get(path)
        assert answer.status_code == 404, path
        check("ErrorResponse", answer.json())


async def test_cancelling_a_response_that_is_not_background_is_400(alice: Tenant) -> None:
    done = await turn(alice.http, "hi")
    answer = await alice.http.post(f"/v1/responses/{done['id']}/cancel")
    assert answer.status_code == 400
    check("ErrorResponse", answer.json())
    assert answer.json()["error"]["code"] == "not_cancellable"
    assert (await alice.http.get(f"/v1/responses/{done['id']}")).json()["status"] == "completed"


async def test_an_unknown_previous_response_is_400_previous_response_not_found(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": "resp_missing"}
    )
    assert answer.status_code == 400
    check("ErrorResponse", answer.json())
    assert answer.json()["error"] == {
        "message": answer.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert fake_upstream.requests == []
