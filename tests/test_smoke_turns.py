"""First turn-loop checks through the HTTP API."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response


async def test_second_turn_replays_first_turn_exactly(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = (await alice.http.post("/v1/conversations", json={})).json()
    fake_upstream.reply_json(text_response("Paris.", msg_id="msg_up_1"))
    first = await alice.http.post(
        "/v1/responses", json={"model": "openai/gpt-4o", "input": "Capital of France?", "conversation": conv["id"]}
    )
    assert first.status_code == 200, first.text
    second = await alice.http.post(
        "/v1/responses", json={"model": "openai/gpt-4o", "input": "And Spain?", "conversation": conv["id"]}
    )
    assert second.status_code == 200, second.text
    sent = fake_upstream.requests[1].body
    assert sent["store"] is False
    assert "previous_response_id" not in sent and "conversation" not in sent
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Capital of France?"}]},
        {
            "type": "message",
            "id": "msg_up_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Paris.", "annotations": []}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And Spain?"}]},
    ]
    async with db.connect() as conn:
        positions = (
            (
                await conn.execute(
                    text("SELECT position FROM item WHERE conversation_id = :c ORDER BY position"), {"c": conv["id"]}
                )
            )
            .scalars()
            .all()
        )
    assert positions == [0, 1, 2, 3]
