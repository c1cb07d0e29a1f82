"""`background: true`: the turn runs on after the request returned; poll it, cancel it, or stream and resume it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.stream_support import (
    assert_well_formed,
    conversation_state,
    output_text,
    parse_sse,
    read_events,
    stored_outputs,
    wait_until_ended,
)
from tests.turn_support import MODEL, new_conversation, rows

TEXT = "A background answer, word after word, until the very end."


async def test_background_returns_at_once_and_polling_sees_it_complete(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=10), delay=0.05))
    started = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "conversation": conv}
    )
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] in {"queued", "in_progress"}
    assert body["background"] is True and body["output"] == []
    [row] = await rows(db, "SELECT status, background FROM response WHERE id = :r", r=body["id"])
    assert row == {"status": "in_progress", "background": True}
    # The client holds the id of a running response: its input items are stored with it, by the begin.
    inputs = (await alice.http.get(f"/v1/responses/{body['id']}/input_items")).json()["data"]
    assert [item["content"] for item in inputs] == [[{"type": "input_text", "text": "hi"}]]

    final = await wait_until_ended(alice.http, body["id"])
    assert final["status"] == "completed"
    assert output_text(final) == TEXT
    assert fake_upstream.requests[0].body["stream"] is True
    state = await conversation_state(db, conv)
    assert len(state["items"]) == 2 and state["turn_response_id"] is None
    stored = await rows(db, "SELECT is_output, position FROM item WHERE response_id = :r ORDER BY pk", r=body["id"])
    assert stored == [{"is_output": False, "position": 0}, {"is_output": True, "position": 1}]
    # Not created with stream=true: no event log kept.
    assert await rows(db, "SELECT 1 FROM response_event_log") == []


async def test_sdk_background_poll(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT), delay=0.02))
    client = alice.openai()
    response = await client.responses.create(model=MODEL, input="hi", background=True)
    assert response.status in {"queued", "in_progress"}
    while response.status in {"queued", "in_progress"}:
        await asyncio.sleep(0.05)
        response = await client.responses.retrieve(response.id)
    assert response.status == "completed"
    assert response.output_text == TEXT


async def test_cancel_keeps_partial_output_and_appends_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, msg_id="msg_bg", chunks=40), delay=0.05))
    body = {"model": MODEL, "input": "hi", "background": True, "stream": True, "conversation": conv}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        seen = await read_events(r, limit=8)  # a few deltas have arrived
    response_id = seen[0]["response"]["id"]

    cancelled = await alice.openai().responses.cancel(response_id)
    assert cancelled.status == "cancelled"
    partial = cancelled.output_text
    assert partial and TEXT.startswith(partial) and partial != TEXT

    retrieved = (await alice.http.get(f"/v1/responses/{response_id}")).json()
    assert retrieved["status"] == "cancelled" and output_text(retrieved) == partial
    [stored] = await stored_outputs(db, response_id)
    assert stored["id"] == "msg_bg" and stored["row_status"] == "incomplete"
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["turn_response_id"] is None

    # The resumed stream ends with exactly one terminal event, carrying the cancelled response.
    replay = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    events = [data for _, data in parse_sse(replay.text)]
    assert_well_formed(events)
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "cancelled"

    # Cancelling again answers the cancelled response unchanged.
    again = await alice.http.post(f"/v1/responses/{response_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_background_stream_survives_disconnect_and_resumes(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
) -> None:
    # Even with the cancel-on-disconnect policy, a background response keeps running.
    live = start_server(stream_disconnect_policy="cancel")
    tenant = await make_tenant("erin", live=live)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=10), delay=0.05))
    body = {"model": MODEL, "input": "hi", "background": True, "stream": True}
    async with tenant.http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        first = await read_events(r, limit=3)
    response_id = first[0]["response"]["id"]
    assert first[0]["response"]["background"] is True

    async with tenant.openai().responses.stream(response_id=response_id, starting_after=2) as stream:
        rest = [event async for event in stream]
        final = await stream.get_final_response()
    assert rest[0].sequence_number == 3
    assert final.status == "completed" and final.output_text == TEXT


async def test_upstream_error_before_first_byte_is_stored_on_the_background_response(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.reply_json({"error": {"code": 400, "message": "Invalid request parameters"}}, status=400)
    started = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    assert started.status_code == 200
    final = await wait_until_ended(alice.http, started.json()["id"])
    assert final["status"] == "failed"
    assert final["error"]["code"] == "invalid_prompt"
    assert "Invalid request parameters" in final["error"]["message"]


async def test_cancel_is_refused_for_foreground_and_unknown_responses(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    refused = await alice.http.post(f"/v1/responses/{plain.json()['id']}/cancel")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "not_cancellable"
    assert (await alice.http.post("/v1/responses/resp_missing/cancel")).status_code == 404

    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=20), delay=0.05))
    started = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    response_id = started.json()["id"]
    assert (await bob.http.post(f"/v1/responses/{response_id}/cancel")).status_code == 404
    completed = await wait_until_ended(alice.http, response_id)
    after = await alice.http.post(f"/v1/responses/{response_id}/cancel")
    assert after.status_code == 200 and after.json() == completed


async def test_shutdown_gives_a_grace_period_then_stores_running_turns_as_failed(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    live = start_server(shutdown_grace_period=0.3)
    tenant = await make_tenant("frank", live=live)
    conv = await new_conversation(tenant.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=40), delay=0.2))
    started = await tenant.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "conversation": conv}
    )
    response_id = started.json()["id"]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(live.stop)

    [row] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response_id)
    assert row["status"] == "failed"
    assert row["error"]["message"] == "The turn was interrupted before it finished"
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["turn_response_id"] is None


async def test_a_background_response_not_created_streaming_has_no_events_to_resume_while_it_runs_or_after(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=20), delay=0.05))
    started = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    response_id = started.json()["id"]
    # The same answer whichever process runs it, and once it ended: a client behind a load balancer sees one rule.
    for moment in ("running", "ended"):
        if moment == "ended":
            assert (await wait_until_ended(alice.http, response_id))["status"] == "completed"
        answer = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
        assert answer.status_code == 400, (moment, answer.text)
        error = answer.json()["error"]
        assert error["param"] == "stream" and "stream=true" in error["message"], (moment, error)
