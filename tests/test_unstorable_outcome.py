"""An outcome the database refuses for good (not a restart: a value or a rule it will never take). The turn is
stored as failed without its output, so its conversation is free for the next turn at once, not after
TURN_LOCK_TTL. The refusal is a real PostgreSQL error, raised by a trigger this test installs and removes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.stream_support import parse_sse
from tests.turn_support import MODEL, new_conversation, rows

REFUSED = {"refuse": "yes"}


@asynccontextmanager
async def _refusing(db: AsyncEngine, condition: str) -> AsyncIterator[None]:
    """A trigger on `response` that raises, as PostgreSQL refusing a value for good would, when `condition` (SQL
    on the row being written, NEW) holds; removed afterwards."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF {condition} THEN
                        RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22023';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER test_refuse BEFORE INSERT OR UPDATE ON response "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse()"
            )
        )
    try:
        yield
    finally:
        async with db.begin() as conn:
            await conn.execute(text("DROP TRIGGER test_refuse ON response"))
            await conn.execute(text("DROP FUNCTION test_refuse()"))


@pytest.fixture
async def refusing_answers(db: AsyncEngine) -> AsyncIterator[None]:
    """PostgreSQL refuses to store an answered response whose metadata asks for it."""
    async with _refusing(db, "NEW.status = 'completed' AND NEW.metadata->>'refuse' = 'yes'"):
        yield


async def _next_turn_goes_through(tenant: Tenant, fake_upstream: FakeOpenRouter, conversation: str) -> None:
    fake_upstream.reply_json(text_response("second answer"))
    second = await tenant.http.post(
        "/v1/responses", json={"model": MODEL, "input": "second", "conversation": conversation}
    )
    assert second.status_code == 200, second.text
    # The refused turn answered nothing the conversation keeps: only the second turn's input is sent.
    sent = fake_upstream.requests[-1].body["input"]
    assert [item["content"] for item in sent] == [[{"type": "input_text", "text": "second"}]]


async def test_a_refused_answer_is_stored_as_failed_and_frees_the_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, refusing_answers: None
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("first answer"))
    first = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "first", "conversation": conversation, "metadata": REFUSED},
    )
    assert first.status_code == 500, first.text
    assert first.json()["error"]["type"] == "server_error"
    stored = await rows(db, "SELECT status, error, metadata FROM response")
    assert [(row["status"], row["error"]["code"]) for row in stored] == [("failed", "server_error")]
    claimed = await rows(db, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conversation)
    assert claimed == [{"turn_response_id": None}]
    await _next_turn_goes_through(alice, fake_upstream, conversation)


async def test_a_refused_streamed_answer_ends_the_stream_failed_and_frees_the_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, refusing_answers: None
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("first answer")))
    streamed = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "first", "conversation": conversation, "metadata": REFUSED, "stream": True},
    )
    assert streamed.status_code == 200
    last = parse_sse(streamed.text)[-1][1]
    assert last["type"] == "response.failed"
    assert last["response"]["error"]["code"] == "server_error"
    response_id = last["response"]["id"]
    stored = await rows(db, "SELECT id, status, error FROM response")
    assert [(row["id"], row["status"], row["error"]["code"]) for row in stored] == [
        (response_id, "failed", "server_error")
    ]
    shown = await alice.http.get(f"/v1/responses/{response_id}")
    assert shown.json()["status"] == "failed" and shown.json()["output"] == []
    await _next_turn_goes_through(alice, fake_upstream, conversation)


ALWAYS_REFUSED = {"refuse": "always"}


@pytest.fixture
async def refusing_every_outcome(db: AsyncEngine) -> AsyncIterator[None]:
    """PostgreSQL refuses to store any outcome of a response whose metadata asks for it, its failure included
    (both carry the usage the upstream charged): only a write that leaves the usage alone goes through."""
    async with _refusing(db, "NEW.usage IS NOT NULL AND NEW.metadata->>'refuse' = 'always'"):
        yield


@pytest.mark.parametrize("stream", [False, True])
async def test_a_turn_refused_even_as_a_failure_still_frees_its_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, refusing_every_outcome: None, stream: bool
) -> None:
    """Its conversation used to stay claimed until TURN_LOCK_TTL (16 minutes by default) while the process lived.
    A streamed turn's response, stored at its begin, is failed; a plain one's never existed (its finish stores it)."""
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "input": "first", "conversation": conversation, "metadata": ALWAYS_REFUSED}
    if stream:
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("first answer")))
        streamed = await alice.http.post("/v1/responses", json={**body, "stream": True})
        last = parse_sse(streamed.text)[-1][1]
        assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_error"
        stored = await rows(db, "SELECT id, status, usage FROM response")
        assert stored == [{"id": last["response"]["id"], "status": "failed", "usage": None}]
    else:
        fake_upstream.reply_json(text_response("first answer"))
        first = await alice.http.post("/v1/responses", json=body)
        assert first.status_code == 500, first.text
        assert "nor could it be stored as failed" in first.json()["error"]["message"]
        assert await rows(db, "SELECT id FROM response") == []
    claimed = await rows(db, "SELECT turn_response_id, last_status FROM conversation WHERE id = :c", c=conversation)
    assert claimed == [{"turn_response_id": None, "last_status": "failed"}]
    await _next_turn_goes_through(alice, fake_upstream, conversation)
