"""`stream: true`: the SSE bridge from OpenRouter's stream to OpenAI's canonical events, and what gets stored
when the client leaves, the upstream breaks, or the upstream reports a failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.upstream.demo import DemoTransport
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.stream_support import (
    CANONICAL_TEXT_TYPES,
    assert_well_formed,
    conversation_state,
    output_text,
    parse_sse,
    read_events,
    stored_logs,
    stored_outputs,
    wait_until_ended,
)
from tests.turn_support import MODEL, new_conversation, rows

TEXT = "Streaming never loses a word."


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_sdk_stream_helper_final_response_equals_stored_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, msg_id="msg_up_stream")))
    client = alice.openai()
    async with client.responses.stream(model=MODEL, input="Say it", conversation=conv) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    assert [e.type for e in events] == CANONICAL_TEXT_TYPES
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == TEXT
    assert final.status == "completed"
    assert final.output_text == TEXT
    assert final.id.startswith("resp_")
    assert fake_upstream.requests[0].body["stream"] is True

    [stored] = await stored_outputs(db, final.id)
    assert stored["id"] == "msg_up_stream"
    assert stored["content"][0]["text"] == TEXT
    state = await conversation_state(db, conv)
    assert state["turn_response_id"] is None
    assert [i["type"] for i in state["items"]] == ["message", "message"]
    assert state["items"][1]["content"][0]["text"] == TEXT
    retrieved = (await alice.http.get(f"/v1/responses/{final.id}")).json()
    assert retrieved["status"] == "completed" and output_text(retrieved) == TEXT


async def test_raw_sse_has_event_lines_canonical_order_and_one_terminal(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT)))
    async with alice.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = (await r.aread()).decode()

    parsed = parse_sse(raw)
    assert all(name == data["type"] for name, data in parsed)
    events = [data for _, data in parsed]
    assert [e["type"] for e in events] == CANONICAL_TEXT_TYPES
    assert_well_formed(events)
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in events[3:-2])
    created, terminal = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert terminal["id"] == created["id"]
    stored = (await alice.http.get(f"/v1/responses/{terminal['id']}")).json()
    assert terminal == stored
    assert output_text(stored) == TEXT


async def test_sdk_create_with_stream_true_yields_typed_events(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT)))
    stream = await alice.openai().responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == TEXT


async def test_legacy_event_names_comments_and_event_lines_are_understood(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The names in OpenRouter's prose examples: content_part.delta (string or {text}) and response.done
    without output; no item_id, no sequence numbers; keep-alive comments and `event:` lines in between."""
    legacy: list[Any] = [
        ": OPENROUTER PROCESSING\n\n",
        {"type": "response.created", "response": {"id": "gen-legacy", "object": "response", "status": "in_progress"}},
        "event: response.output_item.added\n",
        {
            "type": "response.output_item.added",
            "response_id": "gen-legacy",
            "output_index": 0,
            "item": {
                "type": "message",
                "id": "msg_legacy",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
        },
        {"type": "response.content_part.delta", "response_id": "gen-legacy", "delta": "Once "},
        ": OPENROUTER PROCESSING\n\n",
        {"type": "response.content_part.delta", "output_index": 0, "content_index": 0, "delta": {"text": "upon"}},
        {"type": "response.content_part.delta", "output_index": 0, "part": {"type": "output_text", "text": " a time"}},
        {
            "type": "response.done",
            "response": {
                "id": "gen-legacy",
                "object": "response",
                "status": "completed",
                "model": "openai/gpt-4o-2024",
                "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
            },
        },
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=legacy))
    async with alice.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        events = await read_events(r)

    assert_well_formed(events)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert output_text(final) == "Once upon a time"
    assert final["model"] == "openai/gpt-4o-2024"
    assert final["usage"]["total_tokens"] == 7
    [stored] = await stored_outputs(db, final["id"])
    assert stored["id"] == "msg_legacy" and stored["status"] == "completed"
    assert stored["content"] == [{"type": "output_text", "text": "Once upon a time", "annotations": []}]
    [row] = await rows(db, "SELECT status, upstream_id FROM response WHERE id = :r", r=final["id"])
    assert row == {"status": "completed", "upstream_id": "gen-legacy"}


async def test_stream_ending_without_terminal_event_is_completed_from_finished_items(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """OpenRouter sometimes closes after the last output_item.done without response.completed."""
    events = text_stream_events(TEXT)[:-1]
    fake_upstream.enqueue(Reply(kind="sse", events=events, done=False))
    stream = await alice.openai().responses.create(model=MODEL, input="hi", stream=True)
    received = [event async for event in stream]
    assert received[-1].type == "response.completed"
    assert received[-1].response.output_text == TEXT


@pytest.mark.parametrize(
    ("chunks", "deltas_sent"),
    [(4, 2), (60, 37)],
    ids=["short", "long"],  # long: the partial text is kept as pieces joined every few deltas
)
async def test_cut_upstream_stores_partial_output_and_ends_with_failed(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, chunks: int, deltas_sent: int
) -> None:
    conv = await new_conversation(alice.http)
    # created, in_progress, item added, part added, some deltas, then the connection drops.
    events_sent = text_stream_events(TEXT * 3, msg_id="msg_cut", chunks=chunks)
    fake_upstream.enqueue(Reply(kind="sse", events=events_sent, cut_after=4 + deltas_sent))
    body = {"model": MODEL, "input": "hi", "stream": True, "conversation": conv}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        events = await read_events(r)

    assert_well_formed(events)
    terminal = events[-1]
    assert terminal["type"] == "response.failed"
    response = terminal["response"]
    assert response["status"] == "failed"
    assert "cut" in response["error"]["message"]
    partial = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert partial == "".join(e["delta"] for e in events_sent[4 : 4 + deltas_sent])
    assert partial and (TEXT * 3).startswith(partial) and partial != TEXT * 3
    assert [e["type"] for e in events[-4:-1]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]

    [stored] = await stored_outputs(db, response["id"])
    assert stored["id"] == "msg_cut"
    assert stored["row_status"] == "incomplete" and stored["status"] == "incomplete"
    assert stored["content"][0]["text"] == partial
    retrieved = (await alice.http.get(f"/v1/responses/{response['id']}")).json()
    assert retrieved["status"] == "failed" and output_text(retrieved) == partial
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["item_count"] == 0
    assert state["turn_response_id"] is None  # the claim is released: the next turn may run

    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("again")))
    retry = await alice.http.post("/v1/responses", json=body)
    assert retry.status_code == 200
    assert fake_upstream.requests[-1].body["input"] == [_user("hi")]


@pytest.mark.parametrize(
    "failure",
    [
        {
            "type": "response.failed",
            "response": {
                "id": "gen-failed",
                "status": "failed",
                "error": {"code": "server_error", "message": "provider exploded"},
            },
        },
        {"type": "error", "code": "server_error", "message": "provider exploded", "param": None},
        {"type": "error", "error": {"code": 502, "message": "provider exploded"}},
        {"type": "response.error", "error": {"code": "server_error", "message": "provider exploded"}},
    ],
    ids=["response.failed", "error-flat", "error-nested", "response.error"],
)
async def test_in_band_upstream_failure_ends_with_failed_and_appends_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, failure: dict[str, Any]
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=[*text_stream_events(TEXT)[:5], failure]))
    body = {"model": MODEL, "input": "hi", "stream": True, "conversation": conv}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        events = await read_events(r)

    assert_well_formed(events)
    response = events[-1]["response"]
    assert events[-1]["type"] == "response.failed"
    assert response["status"] == "failed"
    assert response["error"]["message"] == "provider exploded"
    [row] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response["id"])
    assert row["status"] == "failed" and row["error"]["message"] == "provider exploded"
    [stored] = await stored_outputs(db, response["id"])
    assert stored["status"] == "incomplete"
    assert (await conversation_state(db, conv))["items"] == []


async def test_upstream_error_before_first_byte_is_the_same_http_error_as_non_streamed(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    upstream_error = {"error": {"code": 400, "message": "Invalid request parameters"}}
    fake_upstream.reply_json(upstream_error, status=400)
    plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    fake_upstream.reply_json(upstream_error, status=400)
    streamed = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})

    assert plain.status_code == 400
    assert streamed.status_code == 400
    assert streamed.headers["content-type"].startswith("application/json")
    assert streamed.json() == plain.json()
    statuses = await rows(db, "SELECT status, stream FROM response ORDER BY created_at")
    assert statuses == [{"status": "failed", "stream": False}, {"status": "failed", "stream": True}]


async def test_client_disconnect_after_three_events_still_stores_full_output(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=8), delay=0.05))
    body = {"model": MODEL, "input": "hi", "stream": True, "conversation": conv}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        first = await read_events(r, limit=3)
    response_id = first[0]["response"]["id"]
    assert [e["type"] for e in first] == ["response.created", "response.in_progress", "response.output_item.added"]

    final = await wait_until_ended(alice.http, response_id)
    assert final["status"] == "completed"
    assert output_text(final) == TEXT
    state = await conversation_state(db, conv)
    assert [i["type"] for i in state["items"]] == ["message", "message"]
    assert state["items"][1]["content"][0]["text"] == TEXT
    [log] = await rows(db, "SELECT event_count FROM response_event_log WHERE response_id = :r", r=response_id)
    assert log["event_count"] == len(CANONICAL_TEXT_TYPES) + 4


async def test_cancel_policy_stops_the_turn_when_the_client_disconnects(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    live = start_server(stream_disconnect_policy="cancel")
    tenant = await make_tenant("carol", live=live)
    conv = await new_conversation(tenant.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=20), delay=0.1))
    body = {"model": MODEL, "input": "hi", "stream": True, "conversation": conv}
    async with tenant.http.stream("POST", "/v1/responses", json=body) as r:
        first = await read_events(r, limit=5)
    response_id = first[0]["response"]["id"]

    final = await wait_until_ended(tenant.http, response_id)
    assert final["status"] == "cancelled"
    assert output_text(final) != TEXT
    state = await conversation_state(db, conv)
    assert state["items"] == [] and state["turn_response_id"] is None


@pytest.mark.parametrize(
    ("text", "chunks", "read_first"),
    [(TEXT, 8, 4), (TEXT * 4, 58, 40)],
    ids=["short", "long"],  # long: the run keeps its older frames compressed, and the resume reads them back
)
async def test_resume_with_starting_after_while_running_and_after_the_end(
    alice: Tenant, fake_upstream: FakeOpenRouter, text: str, chunks: int, read_first: int
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(text, chunks=chunks), delay=0.05))
    async with alice.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        live = await read_events(r, limit=read_first)
    first = live[:4]
    response_id = first[0]["response"]["id"]

    # While the turn still runs: served live, from the event after 3 up to the terminal one.
    async with alice.http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 3}
    ) as r:
        assert r.status_code == 200
        rest = await read_events(r)
    assert_well_formed(rest, first=4)
    assert rest[: len(live) - 4] == live[4:]
    assert rest[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in [*first, *rest] if e["type"] == "response.output_text.delta") == text

    # After the end: replayed from the stored log, byte for byte the same events, and the terminal event is the
    # stored response (stored by the statement that stored the log, completion time included).
    await wait_until_ended(alice.http, response_id)
    stored = (await alice.http.get(f"/v1/responses/{response_id}")).json()
    assert rest[-1]["response"] == stored
    assert stored["created_at"] <= stored["completed_at"] <= stored["created_at"] + 30
    replay = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 3})
    assert [data for _, data in parse_sse(replay.text)] == rest
    everything = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert [data for _, data in parse_sse(everything.text)] == [*first, *rest]

    # The SDK's ways of resuming.
    client = alice.openai()
    resumed = await client.responses.retrieve(response_id, stream=True, starting_after=10)
    numbers = [event.sequence_number async for event in resumed]
    assert numbers == list(range(11, len(first) + len(rest)))
    async with client.responses.stream(response_id=response_id, starting_after=5) as stream:
        seen = [event.sequence_number async for event in stream]
        final = await stream.get_final_response()
    assert seen[0] == 6 and final.output_text == text


@pytest.mark.parametrize("background", [False, True])
async def test_a_stream_rebuilt_from_its_stored_state_opens_as_the_live_one_did(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, background: bool
) -> None:
    """A stream whose process died before writing its event log is replayed from the stored response. A reader
    who has seen no more than its opening events gets the rest of them numbered as they were sent live: a
    background stream opens with response.queued before response.in_progress, as its create answer said, and
    with the model asked for (the upstream answers with the one it routed to)."""
    routed = "openai/gpt-4o-mini-2024-07-18"
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=4, model=routed)))
    body = {"model": MODEL, "input": "hi", "stream": True, "background": background}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        live = await read_events(r)
    response_id = live[0]["response"]["id"]
    await wait_until_ended(alice.http, response_id)
    async with db.begin() as conn:  # what a process killed mid-stream leaves, once the reaper failed the turn
        await conn.execute(text("DELETE FROM response_event_log WHERE response_id = :r"), {"r": response_id})
        failure = '{"code": "server_error", "message": "The turn was interrupted before it finished"}'
        await conn.execute(
            text("UPDATE response SET status = 'failed', error = CAST(:e AS jsonb) WHERE id = :r"),
            {"r": response_id, "e": failure},
        )
    opening = 3 if background else 2
    expected = (
        ["response.created", "response.queued", "response.in_progress"]
        if background
        else [
            "response.created",
            "response.in_progress",
        ]
    )
    assert [e["type"] for e in live[:opening]] == expected
    assert [e["response"]["model"] for e in live[:opening]] == [MODEL] * opening
    for after in range(-1, opening):
        replay = await alice.http.get(
            f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": after}
        )
        rebuilt = [data for _, data in parse_sse(replay.text)]
        assert [e["sequence_number"] for e in rebuilt] == list(range(after + 1, after + 1 + len(rebuilt)))
        shown = rebuilt[: opening - after - 1]
        assert [(e["type"], e["response"]["status"]) for e in shown] == [
            (e["type"], e["response"]["status"]) for e in live[after + 1 : opening]
        ]
        # How it ended is said by its terminal event only, as live.
        assert [(e["response"]["error"], e["response"]["incomplete_details"]) for e in shown] == [
            (None, None) for _ in shown
        ]
        assert [e["response"]["model"] for e in shown] == [MODEL for _ in shown]
        assert rebuilt[-1]["response"]["model"] == routed
        assert (rebuilt[-1]["type"], rebuilt[-1]["response"]["status"]) == ("response.failed", "failed")
        assert rebuilt[-1]["response"]["error"]["code"] == "server_error"
    past = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": opening})
    assert [(e["type"], e["sequence_number"]) for _, e in parse_sse(past.text)] == [("response.failed", opening + 1)]


async def test_resume_rejects_non_streamed_and_unknown_responses(alice: Tenant, bob: Tenant) -> None:
    plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    response_id = plain.json()["id"]
    not_streamed = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert not_streamed.status_code == 400
    assert not_streamed.json()["error"]["param"] == "stream"
    other_tenant = await bob.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert other_tenant.status_code == 404
    bad_number = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "x"})
    assert bad_number.status_code == 400
    # Checked whether or not the response is streamed back: a client's typo is not silently ignored.
    for stream, after in [
        ("false", "abc"),
        (None, "abc"),
        ("true", "\uff15"),
        ("true", "1_0"),
        ("true", " 3"),
        ("true", "9" * 5000),
    ]:
        params = {"starting_after": after} if stream is None else {"stream": stream, "starting_after": after}
        refused = await alice.http.get(f"/v1/responses/{response_id}", params=params)
        assert refused.status_code == 400, (stream, after, refused.text)
        assert refused.json()["error"]["param"] == "starting_after"
    for flag in ("garbage", "2"):
        refused = await alice.http.get(f"/v1/responses/{response_id}", params={"include_obfuscation": flag})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "include_obfuscation", refused.text
    plain_again = await alice.http.get(
        f"/v1/responses/{response_id}",
        params={"stream": "false", "starting_after": "2", "include_obfuscation": "false"},
    )
    assert plain_again.status_code == 200 and plain_again.json()["id"] == response_id


async def test_resume_of_a_streamed_response_without_event_log_rebuilds_it_from_state(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT)))
    stream = await alice.openai().responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    response_id = events[-1].response.id
    async with db.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM response_event_log")
    replay = await alice.http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    replayed = [data for _, data in parse_sse(replay.text)]
    assert_well_formed(replayed)
    assert replayed[0]["type"] == "response.created"
    assert replayed[-1]["type"] == "response.completed" and output_text(replayed[-1]["response"]) == TEXT


async def test_deleting_a_streamed_response_deletes_its_event_log(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT)))
    stream = await alice.openai().responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    response_id = events[-1].response.id
    [log] = (await stored_logs(db, response_id)).values()
    assert TEXT[:8] in log
    assert (await alice.http.delete(f"/v1/responses/{response_id}")).status_code == 200
    assert await rows(db, "SELECT 1 FROM response_event_log") == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"upstream_idle_timeout": 0.3}, "UPSTREAM_IDLE_TIMEOUT"),
        ({"upstream_total_timeout": 0.5, "upstream_idle_timeout": 5}, "UPSTREAM_TOTAL_TIMEOUT"),
    ],
    ids=["idle", "total"],
)
async def test_a_stalled_or_overlong_stream_is_abandoned_and_stored_as_failed(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    settings: dict[str, float],
    named: str,
) -> None:
    live = start_server(**settings)
    tenant = await make_tenant("dave", live=live)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT), delay=1.0))  # 1 s between events
    async with tenant.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        events = await read_events(r)
    assert events[-1]["type"] == "response.failed"
    assert named in events[-1]["response"]["error"]["message"]
    stored = (await tenant.http.get(f"/v1/responses/{events[-1]['response']['id']}")).json()
    assert stored["status"] == "failed"


async def test_store_false_streams_without_storing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT)))
    body = {"model": MODEL, "input": "hi", "stream": True, "store": False}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        events = await read_events(r)
    assert events[-1]["type"] == "response.completed"
    assert output_text(events[-1]["response"]) == TEXT
    assert await rows(db, "SELECT id FROM response") == []


async def test_a_running_store_false_stream_cannot_be_resumed_here_any_more_than_elsewhere(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Another process finds no row for it (404): the process running it answers the same, wherever the load
    balancer sends the resume."""
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=30), delay=0.05))
    body = {"model": MODEL, "input": "hi", "stream": True, "store": False}
    async with alice.http.stream("POST", "/v1/responses", json=body) as r:
        lines = r.aiter_lines()
        first = None
        async for line in lines:
            if line.startswith("data: "):
                first = json.loads(line[6:])
                break
        assert first is not None
        resumed = await alice.http.get(f"/v1/responses/{first['response']['id']}", params={"stream": "true"})
        assert resumed.status_code == 404, resumed.text
        assert resumed.json()["error"]["code"] == "not_found"


async def test_slow_reader_gets_every_event_in_order(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=30)))
    async with alice.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        await asyncio.sleep(0.5)  # the whole answer piles up before we read a byte
        events = await read_events(r)
    assert_well_formed(events)
    assert output_text(events[-1]["response"]) == TEXT


async def test_streamed_turn_replays_in_the_next_non_streamed_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conv = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, msg_id="msg_s1")))
    stream = await alice.openai().responses.create(model=MODEL, input="one", conversation=conv, stream=True)
    _ = [event async for event in stream]
    second = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "two", "conversation": conv})
    assert second.status_code == 200
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[0] == _user("one")
    assert sent[1] == {
        "type": "message",
        "id": "msg_s1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
    }
    assert sent[2] == _user("two")


async def test_items_finishing_out_of_order_are_assembled_by_output_index(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A reasoning item and a function call; the call finishes before the reasoning item does."""
    reasoning = {
        "type": "reasoning",
        "id": "rs_up_1",
        "summary": [{"type": "summary_text", "text": "Need the weather."}],
        "encrypted_content": "gAAAA-opaque",
    }
    call = {
        "type": "function_call",
        "id": "fc_up_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    events: list[Any] = [
        {"type": "response.created", "response": {"id": "gen-ooo", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning, "summary": []}},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**call, "arguments": "", "status": "in_progress"},
        },
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_up_1",
            "output_index": 1,
            "delta": '{"city":',
        },
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_up_1",
            "output_index": 1,
            "delta": '"Paris"}',
        },
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_up_1",
            "output_index": 1,
            "arguments": call["arguments"],
        },
        {"type": "response.output_item.done", "output_index": 1, "item": call},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {
            "type": "response.completed",
            "response": {"id": "gen-ooo", "status": "completed", "output": [reasoning, call]},
        },
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    async with alice.openai().responses.stream(model=MODEL, input="Weather?", tools=tools) as stream:
        received = [event async for event in stream]
        final = await stream.get_final_response()

    assert [e.sequence_number for e in received] == list(range(len(received)))
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    assert final.output[1].arguments == call["arguments"]
    stored = await stored_outputs(db, final.id)
    assert [{k: v for k, v in s.items() if k != "row_status"} for s in stored] == [
        reasoning,  # exactly as the upstream finished it
        call,
    ]


async def test_demo_upstream_streams_through_the_same_bridge(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any]
) -> None:
    live = start_server(transport=DemoTransport())
    tenant = await make_tenant("gina", live=live)
    async with tenant.openai().responses.stream(model="demo/echo", input="ping") as stream:
        final = await stream.get_final_response()
    assert final.status == "completed"
    assert "You said: 'ping'" in final.output_text


async def test_events_split_across_chunks_with_crlf_line_endings_are_parsed(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    raw: list[Any] = []
    for event in text_stream_events(TEXT):
        line = f"event: {event['type']}\r\ndata: {json.dumps(event)}\r\n\r\n"
        middle = len(line) // 2
        raw.extend([line[:middle], line[middle:]])
    fake_upstream.enqueue(Reply(kind="sse", events=raw, delay=0.005))
    stream = await alice.openai().responses.create(model=MODEL, input="hi", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == CANONICAL_TEXT_TYPES
    assert events[-1].response.output_text == TEXT


async def test_a_quiet_stream_gets_keep_alive_comments_until_the_first_token(
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
) -> None:
    """While the upstream is quiet, the client gets an SSE comment every SSE_KEEPALIVE_SECONDS (here 0.2 s
    instead of 15), so proxies keep the connection open; the events themselves are unchanged."""
    tenant = await make_tenant("quiet", live=start_server(sse_keepalive_seconds=0.2))
    events_sent = text_stream_events(TEXT, chunks=2)
    fake_upstream.enqueue(Reply(kind="sse", events=events_sent, delay=0.5))  # 0.5 s between upstream events
    async with tenant.http.stream("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}) as r:
        raw = (await r.aread()).decode()
    gaps = raw.split("event: ")[1:]  # what follows each event: its data, then the keep-alives before the next
    keepalives = [gap.count(": keep-alive\n\n") for gap in gaps]
    assert sum(keepalives) >= len(events_sent) - 1
    assert sum(keepalives) <= len(events_sent) * 0.5 / 0.2 + 1  # one per 0.2 s of quiet, not a flood
    events = [event for _, event in parse_sse(raw)]
    assert events[-1]["type"] == "response.completed"
    assert output_text(events[-1]["response"]) == TEXT


async def test_an_upstream_slow_to_start_gets_the_stream_started_with_keep_alives(
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """Until the upstream answered, a streamed turn's client got nothing at all, not even headers: with
    OpenRouter retrying or a provider queueing, a proxy's idle timeout cut the request. Past SSE_KEEPALIVE_SECONDS
    (here 0.2 s) the stream starts, response.created then keep-alives; an upstream error from then on ends it with
    response.failed, as any error after the stream began."""
    tenant = await make_tenant("patient", live=start_server(sse_keepalive_seconds=0.2))
    body = {"model": MODEL, "input": "hi", "stream": True}
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(TEXT, chunks=2), headers_after=1.0))
    async with tenant.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        raw = (await answer.aread()).decode()
    before_answer = raw.split("event: response.output_item.added")[0]
    assert before_answer.startswith("event: response.created") and ": keep-alive\n\n" in before_answer
    events = [event for _, event in parse_sse(raw)]
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed" and output_text(events[-1]["response"]) == TEXT

    error = {"error": {"code": 400, "message": "Invalid request parameters"}}
    fake_upstream.enqueue(Reply(kind="json", status=400, body=error, delay=1.0))
    async with tenant.http.stream("POST", "/v1/responses", json=body) as answer:
        assert answer.status_code == 200
        failed = [event for _, event in parse_sse((await answer.aread()).decode())]
    assert failed[-1]["type"] == "response.failed"
    assert "Invalid request parameters" in failed[-1]["response"]["error"]["message"]
    (stored,) = await rows(db, "SELECT status FROM response WHERE id = :id", id=failed[0]["response"]["id"])
    assert stored["status"] == "failed"
