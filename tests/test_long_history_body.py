"""A long conversation's history goes upstream from its stored text in chunks (service/upstream/body.py): the
body OpenRouter receives is still the stored items verbatim, then the new input, with its exact Content-Length,
on every attempt and for streamed turns alike."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.upstream.body import CHUNK_CHARS, STREAM_FROM_CHARS
from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.turn_support import MODEL, conversation_items, new_conversation, rows, user

# Non-ASCII (two-, three- and four-byte UTF-8) and escapes, so that characters and bytes differ and a chunk's
# edge falls inside multi-byte characters.
_TEXT = 'ascii é 漢字 🙂 \\ " \u0000 ' * 2000


async def _long_conversation(tenant: Tenant, db: AsyncEngine) -> str:
    """A conversation whose history spans several chunks past the size from which it is not joined."""
    conversation = await new_conversation(tenant.http)
    item = {"type": "message", "role": "user", "content": _TEXT}
    while True:
        answer = await tenant.http.post(f"/v1/conversations/{conversation}/items", json={"items": [item] * 10})
        assert answer.status_code == 200, answer.text
        [size] = await rows(db, "SELECT sum(length(body)) AS n FROM item WHERE conversation_id = :c", c=conversation)
        if size["n"] > STREAM_FROM_CHARS + 2 * CHUNK_CHARS:
            return conversation


def _expected_body_tail(stored: list[dict[str, Any]], new_input: str) -> bytes:
    history = ",".join(row["body"] for row in stored)
    new = msgspec.json.encode(user(new_input)).decode()
    return f',"input":[{history},{new}]}}'.encode()


async def test_a_long_history_is_sent_verbatim_with_its_exact_length_on_every_attempt(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await _long_conversation(alice, db)
    stored = await conversation_items(db, conversation)
    fake_upstream.reply_json({"error": {"code": 502, "message": "try again"}}, status=502)
    fake_upstream.reply_json(text_response("Got it."))
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "And?", "conversation": conversation}
    )
    assert answer.status_code == 200, answer.text
    first, second = fake_upstream.requests
    for sent in (first, second):
        assert sent.raw.endswith(_expected_body_tail(stored, "And?"))
        assert int(sent.headers["content-length"]) == len(sent.raw)
        assert "transfer-encoding" not in sent.headers
        assert sent.body["store"] is False
    assert first.raw == second.raw
    # The next turn sends the grown history the same way (from the history cache, plus what was added).
    grown = await conversation_items(db, conversation)
    fake_upstream.reply_json(text_response("Again."))
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "More?", "conversation": conversation}
    )
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[2].raw.endswith(_expected_body_tail(grown, "More?"))


async def test_a_long_history_is_sent_verbatim_for_a_streamed_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await _long_conversation(alice, db)
    stored = await conversation_items(db, conversation)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Streamed.")))
    body = {"model": MODEL, "input": "Go on.", "conversation": conversation, "stream": True}
    async with alice.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        events = [line async for line in answer.aiter_lines() if line.startswith("event: ")]
    assert events[-1] == "event: response.completed"
    [sent] = fake_upstream.requests
    assert sent.raw.endswith(_expected_body_tail(stored, "Go on."))
    assert int(sent.headers["content-length"]) == len(sent.raw)
    assert sent.body["stream"] is True
