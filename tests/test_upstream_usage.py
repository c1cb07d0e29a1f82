"""An upstream's usage report that is not what OpenRouter documents (null, negative, fractional or impossible
token counts, an absurd cost, detail objects of the wrong type) does not cost the client the answer it paid for:
the turn completes and is stored with the answer, the bad values are left out (shown as OpenAI's zeros), a
conversation's or a chain's totals stay sums of sane numbers, and the conversation takes its next turn."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.openai_spec import check
from tests.stream_support import read_events
from tests.turn_support import MODEL, new_conversation, rows

_GOOD = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost": 0.5}

# (the usage the upstream reports, the usage shown's counts and cost, the totals summed: input, output, cost)
_CASES: list[tuple[dict[str, Any], dict[str, Any], tuple[int, int, float]]] = [
    (
        {"input_tokens": 5, "output_tokens": None},
        {"input_tokens": 5, "output_tokens": 0, "total_tokens": 5},
        (5, 0, 0),
    ),
    (
        {"input_tokens": None, "output_tokens": None, "total_tokens": None, "cost": None},
        {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        (0, 0, 0),
    ),
    (
        {"input_tokens": -5, "output_tokens": -1, "total_tokens": -6, "cost": 0.25},
        {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost": 0.25},
        (0, 0, 0.25),
    ),
    (
        {"input_tokens": 10**30, "output_tokens": 7, "total_tokens": 10**30 + 7, "cost": 1e30},
        {"input_tokens": 0, "output_tokens": 7, "total_tokens": 7},
        (0, 7, 0),
    ),
    (
        {"input_tokens": 2.5, "output_tokens": 4.0, "total_tokens": "many", "cost": float("1e-12")},
        {"input_tokens": 0, "output_tokens": 4, "total_tokens": 4, "cost": 1e-12},
        (0, 4, 0),
    ),
    (
        {**_GOOD, "input_tokens_details": [1], "output_tokens_details": {"reasoning_tokens": None}},
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost": 0.5},
        (10, 5, 0.5),
    ),
    (
        {**_GOOD, "input_tokens_details": {"cached_tokens": -3}, "output_tokens_details": "none"},
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost": 0.5},
        (10, 5, 0.5),
    ),
]


def _counts(usage: dict[str, Any]) -> dict[str, Any]:
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    return {k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens", "cost") if k in usage}


@pytest.mark.parametrize(("reported", "shown", "totals"), _CASES)
async def test_a_bad_usage_report_leaves_out_its_bad_values_and_the_answer_is_stored(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    reported: dict[str, Any],
    shown: dict[str, Any],
    totals: tuple[int, int, float],
) -> None:
    conversation = await new_conversation(alice.http)
    plain = text_response("plain answer", msg_id="msg_plain")
    plain["usage"] = reported
    fake_upstream.reply_json(plain)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed" and answer.json()["output"][0]["id"] == "msg_plain"
    check("Response", answer.json())
    assert _counts(answer.json()["usage"]) == shown
    fetched = await alice.http.get(f"/v1/responses/{answer.json()['id']}")
    assert fetched.status_code == 200, fetched.text
    check("Response", fetched.json())
    assert _counts(fetched.json()["usage"]) == shown

    # A streamed turn on the same conversation: its final event carries the same, and it is stored.
    events = text_stream_events("streamed answer", msg_id="msg_streamed")
    events[-1]["response"]["usage"] = reported
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    body = {"model": MODEL, "input": "again", "conversation": conversation, "stream": True}
    async with alice.http.stream("POST", "/v1/responses", json=body) as streamed:
        assert streamed.status_code == 200
        relayed = await read_events(streamed)
    assert relayed[-1]["type"] == "response.completed", [e["type"] for e in relayed]
    check("Response", relayed[-1]["response"])
    assert _counts(relayed[-1]["response"]["usage"]) == shown

    stored = await rows(
        db,
        "SELECT status, input_tokens, output_tokens, cost FROM response WHERE conversation_id = :c ORDER BY created_at",
        c=conversation,
    )
    assert [r["status"] for r in stored] == ["completed", "completed"]
    for row in stored:
        assert (row["input_tokens"], row["output_tokens"], float(row["cost"])) == totals
    [summed] = await rows(
        db, "SELECT input_tokens, output_tokens, cost, response_count FROM conversation WHERE id = :c", c=conversation
    )
    doubled = tuple(2 * value for value in totals)
    assert (summed["input_tokens"], summed["output_tokens"], float(summed["cost"])) == doubled
    assert summed["response_count"] == 2
    items = await rows(db, "SELECT id FROM item WHERE conversation_id = :c ORDER BY position", c=conversation)
    assert [i["id"] for i in items][1::2] == ["msg_plain", "msg_streamed"]

    # The conversation is free for its next turn.
    fake_upstream.reply_json(text_response("next"))
    following = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "next", "conversation": conversation}
    )
    assert following.status_code == 200, following.text


@pytest.mark.parametrize(("reported", "shown", "totals"), _CASES)
async def test_a_bad_usage_report_on_a_previous_response_id_chain_is_left_out_of_its_totals_too(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    reported: dict[str, Any],
    shown: dict[str, Any],
    totals: tuple[int, int, float],
) -> None:
    """The same reports on turns outside any conversation: a root response, then a streamed turn continuing it
    with previous_response_id, whose finish sums into the chain's totals rather than a conversation's."""
    root = text_response("root answer", msg_id="msg_root")
    root["usage"] = reported
    fake_upstream.reply_json(root)
    first = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    assert first.status_code == 200, first.text
    assert _counts(first.json()["usage"]) == shown
    events = text_stream_events("chained answer", msg_id="msg_chained")
    events[-1]["response"]["usage"] = reported
    fake_upstream.enqueue(Reply(kind="sse", events=events))
    body = {"model": MODEL, "input": "again", "previous_response_id": first.json()["id"], "stream": True}
    async with alice.http.stream("POST", "/v1/responses", json=body) as streamed:
        assert streamed.status_code == 200
        relayed = await read_events(streamed)
    assert relayed[-1]["type"] == "response.completed", [e["type"] for e in relayed]
    check("Response", relayed[-1]["response"])
    assert _counts(relayed[-1]["response"]["usage"]) == shown
    stored = await rows(
        db, "SELECT status, input_tokens, output_tokens, cost FROM response WHERE thread_id = :t", t=first.json()["id"]
    )
    assert [r["status"] for r in stored] == ["completed", "completed"]
    for row in stored:
        assert (row["input_tokens"], row["output_tokens"], float(row["cost"])) == totals
    [chain] = await rows(
        db,
        "SELECT input_tokens, output_tokens, cost, response_count FROM response_chain WHERE id = :t",
        t=first.json()["id"],
    )
    doubled = tuple(2 * value for value in totals)
    assert (chain["input_tokens"], chain["output_tokens"], float(chain["cost"])) == doubled
    assert chain["response_count"] == 2
    fetched = await alice.http.get(f"/v1/responses/{relayed[-1]['response']['id']}")
    assert fetched.status_code == 200 and _counts(fetched.json()["usage"]) == shown


async def test_a_usage_stored_before_its_checks_is_shown_in_openais_shape(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Rows written by an earlier version may hold any usage: reading them is never a 500."""
    answered = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    response_id = answered.json()["id"]
    async with db.begin() as conn:
        await conn.execute(
            text(
                """UPDATE response SET usage = '{"input_tokens": 5, "output_tokens": null,
                   "input_tokens_details": [], "output_tokens_details": {"reasoning_tokens": -1}}' WHERE id = :r"""
            ),
            {"r": response_id},
        )
    fetched = await alice.http.get(f"/v1/responses/{response_id}")
    assert fetched.status_code == 200, fetched.text
    check("Response", fetched.json())
    assert _counts(fetched.json()["usage"]) == {"input_tokens": 5, "output_tokens": 0, "total_tokens": 5}
