"""Compaction: the service's own compaction items (POST /v1/responses/compact, context_management on a turn),
what goes upstream once a thread holds one (the exact array), round trips, tampering, and failures. The full
history always stays stored and listed."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.context.compaction import SUMMARY_INSTRUCTIONS
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import (
    SMALL_WINDOW,
    SMALL_WINDOW_COMPLETION,
    SMALL_WINDOW_MODEL,
    SUMMARY_OVERFLOW_MODEL,
    FakeOpenRouter,
    Reply,
    fake_input_tokens,
    response_with_output,
    text_response,
    text_stream_events,
)
from tests.openai_spec import check
from tests.stream_support import assert_well_formed, read_events
from tests.test_truncated_tool_calls import CALL as LOOKUP_CALL
from tests.test_truncated_tool_calls import OUTPUT as LOOKUP_OUTPUT
from tests.test_truncated_tool_calls import REASONING
from tests.test_truncated_tool_calls import TOOLS as LOOKUP_TOOLS
from tests.turn_support import assistant, conversation_items, list_all, new_conversation, rows, user

MODEL = "openai/gpt-4o-mini"
RENDERED_PREFIX = "Summary of the earlier part of this conversation (it was compacted):\n\n"


def rendered(summary: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": RENDERED_PREFIX + summary}],
    }


@pytest.fixture(autouse=True)
def _realistic_usage(fake_upstream: FakeOpenRouter) -> None:
    """Scripted answers report what the fake counted (the service corrects its counts with usage)."""
    fake_upstream.count_scripted = True


def summary_reply(summary: str) -> dict[str, Any]:
    return text_response(summary, msg_id="msg_summary")


async def converse(tenant: Tenant, fake: FakeOpenRouter, conversation: str, texts: list[str]) -> list[str]:
    """Turns with scripted answers; returns the answers' ids."""
    ids = []
    for index, said in enumerate(texts):
        fake.reply_json(text_response(f"answer {index}", msg_id=f"msg_a{index}_{conversation[-6:]}"))
        done = await tenant.openai().responses.create(model=MODEL, input=said, conversation=conversation)
        ids.append(done.output[0].id)
    return ids


async def test_compact_answers_the_user_messages_and_a_sealed_item_that_round_trips(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    client = alice.openai()
    history = [
        {"role": "user", "content": "Plan a trip to Lisbon."},
        {
            "type": "message",
            "id": "msg_x1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Day 1: Alfama.", "annotations": []}],
        },
        {"role": "user", "content": "Add a day in Sintra."},
    ]
    fake_upstream.reply_json(summary_reply("They plan 2 days: Alfama, then Sintra."))
    compacted = await client.responses.compact(model=MODEL, input=history)  # type: ignore[arg-type]
    assert compacted.object == "response.compaction"
    output = [item.model_dump(exclude_none=True) for item in compacted.output]
    # OpenAI's compacted output shows each kept message with an id and a status.
    kept = [
        {**user("Plan a trip to Lisbon."), "status": "completed"},
        {**user("Add a day in Sintra."), "status": "completed"},
    ]
    assert [{k: v for k, v in item.items() if k != "id"} for item in output[:2]] == kept
    assert all(item["id"].startswith("msg_") for item in output[:2]) and output[0]["id"] != output[1]["id"]
    assert output[2]["type"] == "compaction" and output[2]["id"].startswith("cmp_")
    assert "Sintra" not in output[2]["encrypted_content"]  # sealed, not readable
    summary_call = fake_upstream.requests[-1].body
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    assert summary_call["input"][:3] == [
        user("Plan a trip to Lisbon."),
        assistant("Day 1: Alfama.", "msg_x1"),
        user("Add a day in Sintra."),
    ]

    # The client sends the compacted window back with a new message: the compaction item goes as its summary.
    done = await client.responses.create(model=MODEL, input=[*output, {"role": "user", "content": "Budget?"}])
    assert done.status == "completed"
    assert fake_upstream.requests[-1].body["input"] == [
        *output[:2],
        rendered("They plan 2 days: Alfama, then Sintra."),
        user("Budget?"),
    ]
    # ... and the chain that follows still renders it (previous_response_id round trip).
    await client.responses.create(model=MODEL, input="And food?", previous_response_id=done.id)
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[2] == rendered("They plan 2 days: Alfama, then Sintra.")
    assert sent[-1] == user("And food?")
    assert all(item.get("type") != "compaction" for item in sent)


async def test_every_compacted_window_is_openais_compact_resource(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """Kept messages carry an id and a status (OpenAI's Message requires both): one the client named keeps its id,
    the others get new ones, distinct within the window."""
    first = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "root"})
    named = {"type": "message", "id": "msg_named", "role": "user", "content": [{"type": "input_text", "text": "n"}]}
    for thread in (
        {"input": [named, {"role": "user", "content": "plain"}]},
        {"previous_response_id": first.json()["id"]},
    ):
        fake_upstream.reply_json(summary_reply("S"))
        answer = await alice.http.post("/v1/responses/compact", json={"model": MODEL, **thread})
        assert answer.status_code == 200, answer.text
        check("CompactResource", answer.json())
        kept = answer.json()["output"][:-1]
        ids = [item["id"] for item in kept]
        assert kept and all(item["status"] == "completed" for item in kept) and len(set(ids)) == len(ids)
        if "input" in thread:
            assert ids[0] == "msg_named" and ids[1].startswith("msg_")


async def test_compacts_prompt_cache_and_tier_parameters_are_checked_and_go_to_the_summary_call(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """CompactResponseMethodPublicBody's prompt_cache_key, prompt_cache_retention, prompt_cache_options and
    service_tier: they were dropped whatever they held. Checked as a turn's (prompt_cache_key at most 64
    characters here), and sent on with the summary call, which OpenRouter takes as a turn."""
    for wrong, param in (
        ({"prompt_cache_key": 5}, "prompt_cache_key"),
        ({"prompt_cache_key": "k" * 65}, "prompt_cache_key"),
        ({"prompt_cache_retention": "1h"}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"mode": "manual"}}, "prompt_cache_options.mode"),
        ({"service_tier": "gold"}, "service_tier"),
    ):
        refused = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "input": "x", **wrong})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param, refused.text
    assert fake_upstream.requests == []
    forwarded = {
        "prompt_cache_key": "k" * 64,
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "implicit"},
        "service_tier": "flex",
    }
    fake_upstream.reply_json(summary_reply("S"))
    compacted = await alice.openai().responses.compact(model=MODEL, input="remember 42", **forwarded)  # type: ignore[arg-type]
    assert compacted.output[-1].type == "compaction"
    (call,) = fake_upstream.requests
    assert call.body["instructions"] == SUMMARY_INSTRUCTIONS
    assert {name: call.body[name] for name in forwarded} == forwarded


async def test_a_tampered_or_foreign_compaction_item_is_refused_without_an_upstream_call(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(summary_reply("secret summary"))
    compacted = await alice.openai().responses.compact(model=MODEL, input="remember 42")
    item = compacted.output[-1].model_dump(exclude_none=True)
    calls = len(fake_upstream.requests)
    content = item["encrypted_content"]
    altered = {**item, "encrypted_content": content[:-6] + ("AAAAAA" if not content.endswith("AAAAAA") else "BBBBBB")}
    for tenant, candidate in ((alice, altered), (alice, {**item, "encrypted_content": "forged"}), (bob, item)):
        answer = await tenant.http.post(
            "/v1/responses", json={"model": MODEL, "input": [candidate, {"role": "user", "content": "hi"}]}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_encrypted_content"
        assert answer.json()["error"]["param"] == "input[0].encrypted_content"
    assert len(fake_upstream.requests) == calls
    assert await rows(db, "SELECT id FROM response") == []


async def test_a_summary_answer_without_a_status_is_taken_as_completed(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """As a turn's answer without one is (service/responses/outcome.py): only one that says it was cut off fails."""
    reply = summary_reply("S-no-status")
    del reply["status"]
    fake_upstream.reply_json(reply)
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "input": "remember 42"})
    assert compacted.status_code == 200, compacted.text
    assert compacted.json()["output"][-1]["type"] == "compaction"


async def test_compact_in_place_appends_the_item_and_the_next_turn_sends_users_and_summary(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    answers = await converse(alice, fake_upstream, conversation, ["first", "second", "third"])
    fake_upstream.reply_json(summary_reply("S1"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    body = compacted.json()
    check("CompactResource", body)
    assert [i.get("role") for i in body["output"]] == ["user", "user", "user", None]
    # The summary call got the whole conversation, as stored.
    assert fake_upstream.requests[-1].body["input"][:6] == [
        user("first"),
        assistant("answer 0", answers[0]),
        user("second"),
        assistant("answer 1", answers[1]),
        user("third"),
        assistant("answer 2", answers[2]),
    ]
    stored = await conversation_items(db, conversation)
    assert len(stored) == 7 and json.loads(stored[-1]["body"]) == body["output"][-1]

    await alice.openai().responses.create(model=MODEL, input="fourth", conversation=conversation)
    assert fake_upstream.requests[-1].body["input"] == [
        user("first"),
        user("second"),
        user("third"),
        rendered("S1"),
        user("fourth"),
    ]
    # Nothing was lost: every item is still listed.
    listed = await list_all(alice.http, f"/v1/conversations/{conversation}/items", order="asc")
    assert len(listed) == 9
    assert [i["type"] for i in listed].count("compaction") == 1


@pytest.mark.parametrize("failure", ["refused", "cut off"])
async def test_a_failed_compact_leaves_the_conversation_as_it_was(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, failure: str
) -> None:
    """Refused by the provider, or a summary the model cut off (it was sealed as if whole, and then stood for the
    whole history before it while nothing showed what it left out)."""
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["first"])
    before = await conversation_items(db, conversation)
    if failure == "refused":
        fake_upstream.reply_json({"error": {"code": 400, "message": "Provider refused"}}, status=400)
        expected = (400, "OpenRouter: Provider refused")
    else:
        partial = summary_reply("They plan a trip to")
        partial["output"][0]["status"] = "incomplete"
        fake_upstream.reply_json(
            {**partial, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
        )
        expected = (502, "The compaction model's summary was cut off (max_output_tokens)")
    failed = await alice.http.post(
        "/v1/responses/compact", json={"model": MODEL, "conversation": conversation, "input": "extra"}
    )
    assert failed.status_code == expected[0], failed.text
    assert failed.json()["error"]["message"].startswith(expected[1])
    assert await conversation_items(db, conversation) == before
    # Not left claimed: the next turn runs.
    await alice.openai().responses.create(model=MODEL, input="again", conversation=conversation)


async def test_a_thread_whose_user_messages_alone_pass_the_threshold_is_not_compacted_on_every_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Compaction keeps user messages: once they alone passed the threshold, every turn compacted again, paying a
    second, whole summary call for a summary no shorter than the last. A history compacted before is compacted
    again once what a new summary would replace since costs more than the last summary."""
    summary = "They talked about " + "many things " * 60

    def answer(body: dict[str, Any]) -> Reply:
        text = summary if body.get("instructions") == SUMMARY_INSTRUCTIONS else "ok " + "fine " * 20
        return Reply(kind="json", body=text_response(text))

    fake_upstream.responder = answer
    conversation = await new_conversation(alice.http)
    management = [{"type": "compaction", "compact_threshold": 1000}]
    summary_calls = []
    for index in range(16):
        before = len(fake_upstream.requests)
        await alice.openai().responses.create(
            model=MODEL,
            input=f"message {index} " + "word " * 150,
            conversation=conversation,
            context_management=management,  # type: ignore[arg-type]
        )
        made = fake_upstream.requests[before:]
        summary_calls.append(sum(r.body.get("instructions") == SUMMARY_INSTRUCTIONS for r in made))
    # The history passes the threshold at the sixth turn, and its user messages alone soon after: compacted
    # then, and again only once the answers since cost more than the summary (about 20 tokens each, against
    # about 120). On the code before, every turn from the sixth on compacted: 11 summary calls.
    first = summary_calls.index(1)
    assert first <= 6 and 2 <= sum(summary_calls) <= 4, summary_calls
    assert summary_calls[first + 1 : first + 4] == [0, 0, 0], summary_calls


async def test_a_summary_larger_than_the_models_room_is_left_out_with_auto_truncation(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A summary made by a model with a larger window, then a turn on a smaller one: the summary was never dropped,
    so with truncation "auto" too every later turn of the thread was 400 context_length_exceeded. It goes without
    the summary now, as any history too long to send; with "disabled" it is still refused."""
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["first", "second"])
    fake_upstream.reply_json(summary_reply("They said " + "many things " * 700))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    small = {"model": SMALL_WINDOW_MODEL, "conversation": conversation}
    refused = await alice.http.post("/v1/responses", json={**small, "input": "next", "truncation": "disabled"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    for index in range(2):
        done = await alice.http.post("/v1/responses", json={**small, "input": f"next {index}", "truncation": "auto"})
        assert done.status_code == 200, done.text
        sent = fake_upstream.requests[-1].body["input"]
        assert sent[-1] == user(f"next {index}")
        assert all("many things" not in json.dumps(item) for item in sent)
    counted = await alice.http.post("/v1/responses/input_tokens", json={**small, "input": "x", "truncation": "auto"})
    assert counted.status_code == 200, counted.text


async def test_context_management_compacts_before_the_turn_once_past_the_threshold(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    long = "word " * 600
    answers = await converse(alice, fake_upstream, conversation, [f"one {long}", f"two {long}"])
    fake_upstream.reply_json(summary_reply("S-threshold"))
    fake_upstream.reply_json(text_response("after compaction", msg_id="msg_after"))
    done = await alice.openai().responses.create(
        model=MODEL,
        input="three",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    assert [item.type for item in done.output] == ["compaction", "message"]
    summary_call, turn_call = fake_upstream.requests[-2].body, fake_upstream.requests[-1].body
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    assert summary_call["input"][:4] == [
        user(f"one {long}"),
        assistant("answer 0", answers[0]),
        user(f"two {long}"),
        assistant("answer 1", answers[1]),
    ]
    assert "context_management" not in turn_call
    assert turn_call["input"] == [user(f"one {long}"), user(f"two {long}"), rendered("S-threshold"), user("three")]
    # Stored in order: the input, then the compaction item, then the answer; the next turn renders it.
    stored = [json.loads(i["body"]) for i in await conversation_items(db, conversation)]
    assert [i["type"] for i in stored[-3:]] == ["message", "compaction", "message"]
    await alice.openai().responses.create(model=MODEL, input="four", conversation=conversation)
    assert fake_upstream.requests[-1].body["input"] == [
        user(f"one {long}"),
        user(f"two {long}"),
        user("three"),
        rendered("S-threshold"),
        assistant("after compaction", "msg_after"),
        user("four"),
    ]
    # Under the threshold: no compaction.
    calls = len(fake_upstream.requests)
    small = await new_conversation(alice.http)
    quiet = await alice.openai().responses.create(
        model=MODEL,
        input="hi",
        conversation=small,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    assert [item.type for item in quiet.output] == ["message"]
    assert len(fake_upstream.requests) == calls + 1


def priced(reply: dict[str, Any], *, output_tokens: int, cost: float, cached: int) -> dict[str, Any]:
    usage = reply["usage"]
    usage.update(output_tokens=output_tokens, cost=cost)
    usage["input_tokens_details"] = {"cached_tokens": cached}
    return reply


async def test_a_turns_usage_and_stored_totals_include_its_compactions_summary_call(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["one " + "word " * 1200])
    (before,) = await rows(
        db, "SELECT input_tokens, output_tokens, cost FROM conversation WHERE id = :c", c=conversation
    )
    fake_upstream.reply_json(priced(summary_reply("S-billed"), output_tokens=70, cost=0.002, cached=11))
    fake_upstream.reply_json(
        priced(text_response("billed", msg_id="msg_billed"), output_tokens=9, cost=0.0005, cached=0)
    )
    done = await alice.openai().responses.create(
        model=MODEL,
        input="two",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    # The fake reports what it counted as each call's input tokens.
    summary_in = fake_input_tokens(fake_upstream.requests[-2].body)
    turn_in = fake_input_tokens(fake_upstream.requests[-1].body)
    assert done.usage is not None
    assert done.usage.input_tokens == summary_in + turn_in
    assert done.usage.output_tokens == 70 + 9
    assert done.usage.total_tokens == summary_in + turn_in + 79
    assert done.usage.input_tokens_details.cached_tokens == 11
    assert done.model_dump()["usage"]["cost"] == 0.0025
    (stored,) = await rows(db, "SELECT input_tokens, output_tokens, cost FROM response WHERE id = :r", r=done.id)
    assert stored == {"input_tokens": summary_in + turn_in, "output_tokens": 79, "cost": Decimal("0.0025")}
    (after,) = await rows(
        db, "SELECT input_tokens, output_tokens, cost FROM conversation WHERE id = :c", c=conversation
    )
    assert after["input_tokens"] - before["input_tokens"] == summary_in + turn_in
    assert after["output_tokens"] - before["output_tokens"] == 79
    assert after["cost"] - before["cost"] == Decimal("0.0025")

    # A streamed turn's terminal event (and what is stored) includes it too. (First an answer long enough that
    # a new summary is worth its call: the thread was compacted just before.)
    fake_upstream.reply_json(text_response("long " + "word " * 300))
    await alice.openai().responses.create(model=MODEL, input="more", conversation=conversation)
    fake_upstream.reply_json(priced(summary_reply("S-streamed"), output_tokens=40, cost=0.001, cached=0))
    stream = await alice.openai().responses.create(
        model=MODEL,
        input="three " + "word " * 1200,
        conversation=conversation,
        stream=True,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    events = [event async for event in stream]
    final = events[-1].response  # type: ignore[union-attr]
    summary_in = fake_input_tokens(fake_upstream.requests[-2].body)
    assert fake_upstream.requests[-2].body["instructions"] == SUMMARY_INSTRUCTIONS
    assert final.usage is not None and final.usage.output_tokens == 40 + 5  # the stream's template reports 5
    (stored,) = await rows(db, "SELECT input_tokens, output_tokens FROM response WHERE id = :r", r=final.id)
    assert stored == {"input_tokens": final.usage.input_tokens, "output_tokens": 45}
    assert final.usage.input_tokens > summary_in


async def test_a_turn_that_fails_after_its_summary_call_still_counts_that_call(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["one " + "word " * 1200])
    (before,) = await rows(db, "SELECT output_tokens, cost FROM conversation WHERE id = :c", c=conversation)
    fake_upstream.reply_json(priced(summary_reply("S-lost"), output_tokens=70, cost=0.002, cached=0))
    fake_upstream.reply_json({"error": {"message": "Provider returned error", "code": 400}}, status=400)
    failed = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": "two",
            "conversation": conversation,
            "context_management": [{"type": "compaction", "compact_threshold": 1000}],
        },
    )
    assert failed.status_code == 400, failed.text
    summary_in = fake_input_tokens(fake_upstream.requests[-2].body)
    assert fake_upstream.requests[-2].body["instructions"] == SUMMARY_INSTRUCTIONS
    (stored,) = await rows(
        db,
        "SELECT status, input_tokens, output_tokens, cost FROM response WHERE conversation_id = :c "
        "ORDER BY created_at DESC LIMIT 1",
        c=conversation,
    )
    assert stored == {"status": "failed", "input_tokens": summary_in, "output_tokens": 70, "cost": Decimal("0.002")}
    (after,) = await rows(db, "SELECT output_tokens, cost FROM conversation WHERE id = :c", c=conversation)
    assert after["output_tokens"] - before["output_tokens"] == 70
    assert after["cost"] - before["cost"] == Decimal("0.002")


async def test_a_streamed_turn_shows_its_compaction_item_first(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["one " + "word " * 1200])
    fake_upstream.reply_json(summary_reply("S-stream"))
    stream = await alice.openai().responses.create(
        model=MODEL,
        input="two",
        conversation=conversation,
        stream=True,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    events = [event async for event in stream]
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "compaction"), (1, "message")]
    final = events[-1]
    assert final.type == "response.completed"
    assert [item.type for item in final.response.output] == ["compaction", "message"]
    assert fake_upstream.requests[-1].body["input"][-2:] == [rendered("S-stream"), user("two")]


async def test_when_the_summary_call_fails_the_turn_goes_on_uncompacted(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["one " + "word " * 1200])
    fake_upstream.reply_json({"error": {"code": 400, "message": "summary refused"}}, status=400)
    done = await alice.openai().responses.create(
        model=MODEL,
        input="two",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    assert [item.type for item in done.output] == ["message"]
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[0] == user("one " + "word " * 1200) and sent[-1] == user("two") and len(sent) == 3


@pytest.mark.parametrize(
    "management",
    [[{"type": "compaction", "compact_threshold": 999}], [{"type": "other"}], "compaction"],
)
async def test_bad_context_management_is_refused(alice: Tenant, fake_upstream: FakeOpenRouter, management: Any) -> None:
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "context_management": management}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"].startswith("context_management")
    assert fake_upstream.requests == []


async def test_compact_errors(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    missing_model = await alice.http.post("/v1/responses/compact", json={"input": "x"})
    assert missing_model.status_code == 400 and missing_model.json()["error"]["param"] == "model"
    nothing = await alice.http.post("/v1/responses/compact", json={"model": MODEL})
    assert nothing.status_code == 400 and nothing.json()["error"]["param"] == "input"
    unknown = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": "conv_nope"})
    assert unknown.status_code == 404
    assert fake_upstream.requests == []
    with pytest.raises(openai.BadRequestError):
        await alice.openai().responses.compact(model=MODEL, previous_response_id="resp_nope")


async def test_compaction_items_added_to_a_conversation_are_checked_and_then_rendered(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    fake_upstream.reply_json(summary_reply("S-added"))
    compacted = await alice.openai().responses.compact(model=MODEL, input="old talk")
    item = compacted.output[-1].model_dump(exclude_none=True)
    forged = {**item, "encrypted_content": item["encrypted_content"][:-4] + "AAAA"}
    refused = await alice.http.post("/v1/conversations", json={"items": [forged]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "items[0].encrypted_content"
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "old talk"}])
    bad = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [forged]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_encrypted_content"
    good = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [item]})
    assert good.status_code == 200, good.text
    await alice.openai().responses.create(model=MODEL, input="new talk", conversation=conversation)
    assert fake_upstream.requests[-1].body["input"] == [user("old talk"), rendered("S-added"), user("new talk")]
    # The same on a model whose window the catalog does not give (nothing else needs the history counted): it
    # was sent as it is stored, an item type OpenRouter does not have. In a chain too.
    unlisted = "vendor/not-in-the-catalog"
    fake_upstream.reply_json(text_response("Unlisted", msg_id="msg_unlisted"))
    last = await alice.openai().responses.create(model=unlisted, input="more talk", conversation=conversation)
    assert fake_upstream.requests[-1].body["input"][1] == rendered("S-added")
    fake_upstream.reply_json(text_response("Chained"))
    await alice.openai().responses.create(model=unlisted, input="chained talk", previous_response_id=last.id)
    assert fake_upstream.requests[-1].body["input"][1] == rendered("S-added")
    assert fake_upstream.requests[-1].body["input"][-1] == user("chained talk")


CALL = {
    "type": "function_call",
    "id": "fc_weather",
    "call_id": "call_weather",
    "name": "get_weather",
    "arguments": '{"city": "Paris"}',
    "status": "completed",
}
CALL_OUTPUT = {"type": "function_call_output", "call_id": "call_weather", "output": "18C, clear"}


def _tool_kinds(items: list[dict[str, Any]]) -> list[str]:
    return [item["type"] for item in items if item["type"] in ("function_call", "function_call_output")]


async def test_a_call_pending_at_a_compaction_is_sent_with_its_output_after_the_summary(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A conversation ending in a tool call is compacted; the next turn answers the call. Providers refuse an
    output whose call is not sent (and a summary call holding a call without its output): the call goes right
    after the summary, and the summary call never holds it alone."""
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([CALL]))
    asked = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "weather in Paris?", "conversation": conversation}
    )
    assert asked.status_code == 200, asked.text
    fake_upstream.reply_json(summary_reply("S-pending"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    assert _tool_kinds(fake_upstream.requests[-1].body["input"]) == []

    fake_upstream.reply_json(text_response("It is 18C and clear.", msg_id="msg_weather"))
    answered = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [CALL_OUTPUT], "conversation": conversation}
    )
    assert answered.status_code == 200, answered.text
    assert fake_upstream.requests[-1].body["input"] == [
        user("weather in Paris?"),
        rendered("S-pending"),
        CALL,
        CALL_OUTPUT,
    ]
    # Once answered, the pair is history like any other: before a later compaction, it is summarized.
    fake_upstream.reply_json(text_response("You're welcome.", msg_id="msg_thanks"))
    await alice.openai().responses.create(model=MODEL, input="thanks", conversation=conversation)
    assert fake_upstream.requests[-1].body["input"][2:4] == [CALL, CALL_OUTPUT]


async def test_a_compacted_window_ends_with_the_calls_still_waiting_for_their_output(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A client that compacts statelessly sends the window back as its next input: a call it has yet to answer
    must be in it, or its output is refused (no call for it in the context). It comes after the compaction item,
    as it is; the summary call never holds it."""
    reasoning = {"type": "reasoning", "id": "rs_w", "summary": [], "encrypted_content": "gAAAA-w"}
    fake_upstream.reply_json(summary_reply("S-window"))
    compacted = await alice.http.post(
        "/v1/responses/compact", json={"model": MODEL, "input": [user("weather in Paris?"), reasoning, CALL]}
    )
    assert compacted.status_code == 200, compacted.text
    assert _tool_kinds(fake_upstream.requests[-1].body["input"]) == []
    check("CompactResource", compacted.json())
    output = compacted.json()["output"]
    assert [item["type"] for item in output] == ["message", "compaction", "reasoning", "function_call"]
    assert {k: output[-1][k] for k in CALL} == CALL

    fake_upstream.reply_json(text_response("It is 18C and clear.", msg_id="msg_weather"))
    answered = await alice.http.post("/v1/responses", json={"model": MODEL, "input": [*output, CALL_OUTPUT]})
    assert answered.status_code == 200, answered.text
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[1] == rendered("S-window") and sent[-2:] == [output[-1], CALL_OUTPUT]


@pytest.mark.parametrize("continued_by", ["conversation", "previous_response_id"])
async def test_a_turn_answering_a_call_that_crosses_the_threshold_keeps_the_call_with_its_output(
    alice: Tenant, fake_upstream: FakeOpenRouter, continued_by: str
) -> None:
    """In a conversation, or through previous_response_id (the compaction item is then the turn's first output,
    and the chain's later turns send the summary in place of the pair)."""
    conversation = await new_conversation(alice.http) if continued_by == "conversation" else None

    def after(response_id: str) -> dict[str, Any]:
        return {"conversation": conversation} if conversation else {"previous_response_id": response_id}

    long = "word " * 1200
    fake_upstream.reply_json(response_with_output([CALL]))
    first = {"conversation": conversation} if conversation else {}
    asked = await alice.openai().responses.create(model=MODEL, input=f"weather? {long}", **first)
    fake_upstream.reply_json(summary_reply("S-answered"))
    fake_upstream.reply_json(text_response("It is 18C and clear.", msg_id="msg_weather"))
    answered = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": [CALL_OUTPUT],
            **after(asked.id),
            "context_management": [{"type": "compaction", "compact_threshold": 1000}],
        },
    )
    assert answered.status_code == 200, answered.text
    assert [item["type"] for item in answered.json()["output"]] == ["compaction", "message"]
    summary_call, turn_call = fake_upstream.requests[-2].body, fake_upstream.requests[-1].body
    # The summary covers the call and the output answering it (the compaction item is stored after both), as
    # text: the summary call defines no tools, and a provider may refuse tool calls in a request without them.
    assert _tool_kinds(summary_call["input"]) == []
    read = [part["text"] for item in summary_call["input"] for part in item.get("content", []) if "text" in part]
    fields = json.dumps({"name": "get_weather", "arguments": CALL["arguments"]}, separators=(",", ":"))
    assert f"[function_call call_weather] {fields}" in read
    assert "[function_call_output call_weather] 18C, clear" in read
    assert turn_call["input"] == [user(f"weather? {long}"), rendered("S-answered"), CALL, CALL_OUTPUT]
    # Later turns: the pair is behind the compaction item, which stands for it.
    fake_upstream.reply_json(text_response("Bye.", msg_id="msg_bye"))
    await alice.openai().responses.create(model=MODEL, input="bye", **after(answered.json()["id"]))
    later = fake_upstream.requests[-1].body["input"]
    assert _tool_kinds(later) == []
    assert later[-3:] == [rendered("S-answered"), assistant("It is 18C and clear.", "msg_weather"), user("bye")]


async def test_a_compaction_trigger_compacts_before_the_turn_and_is_never_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    answers = await converse(alice, fake_upstream, conversation, ["first", "second"])
    fake_upstream.reply_json(summary_reply("S-trigger"))
    fake_upstream.reply_json(text_response("after the trigger", msg_id="msg_after_trigger"))
    done = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "conversation": conversation,
            "input": [{"role": "user", "content": "third"}, {"type": "compaction_trigger"}],
        },
    )
    assert done.status_code == 200, done.text
    assert [item["type"] for item in done.json()["output"]] == ["compaction", "message"]
    summary_call, turn_call = fake_upstream.requests[-2].body, fake_upstream.requests[-1].body
    assert summary_call["input"][:4] == [
        user("first"),
        assistant("answer 0", answers[0]),
        user("second"),
        assistant("answer 1", answers[1]),
    ]
    assert turn_call["input"] == [user("first"), user("second"), rendered("S-trigger"), user("third")]
    stored = [json.loads(i["body"])["type"] for i in await conversation_items(db, conversation)]
    assert stored == ["message"] * 5 + ["compaction", "message"]

    calls = len(fake_upstream.requests)
    trigger = {"type": "compaction_trigger"}
    for body, param in [
        ({"input": [trigger, {"role": "user", "content": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": "x"}, trigger, trigger]}, "input[1]"),
        ({"input": [trigger]}, "input"),
    ]:
        refused = await alice.http.post("/v1/responses", json={"model": MODEL, "conversation": conversation, **body})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param
    appended = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [trigger]})
    assert appended.status_code == 400 and appended.json()["error"]["param"] == "items[0].type"
    assert len(fake_upstream.requests) == calls
    assert len(await conversation_items(db, conversation)) == 7


@pytest.mark.parametrize("mode", ["plain", "stream", "background"])
async def test_a_stored_compaction_item_that_no_longer_opens_is_the_same_400_in_every_mode(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, mode: str
) -> None:
    """As after a change of COMPACTION_KEY: the stored item cannot be opened. Every mode answers (and stores) the
    same refusal, naming the stored item and the way out, with no upstream call; a streamed one used to be a 502,
    a background one a server_error."""
    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["first"])
    fake_upstream.reply_json(summary_reply("S-old-key"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    item_id = compacted.json()["output"][-1]["id"]
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE item SET body = jsonb_set(body::jsonb, '{encrypted_content}', '\"sealed-elsewhere\"')::text"
                " WHERE id = :i"
            ),
            {"i": item_id},
        )
    calls = len(fake_upstream.requests)
    body = {"model": MODEL, "input": "next", "conversation": conversation}
    answer = await alice.http.post(
        "/v1/responses", json={**body, "stream": mode == "stream", "background": mode == "background"}
    )
    if mode == "background":
        assert answer.status_code == 200, answer.text
        for _ in range(100):
            stored = (await alice.http.get(f"/v1/responses/{answer.json()['id']}")).json()
            if stored["status"] == "failed":
                break
            await asyncio.sleep(0.05)
        error = stored["error"]
        assert error["code"] == "invalid_prompt"
    else:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_encrypted_content", "input")
    assert item_id in error["message"] and "delete it" in error["message"]
    assert len(fake_upstream.requests) == calls
    failed = await rows(
        db, "SELECT error FROM response WHERE conversation_id = :c AND status = 'failed'", c=conversation
    )
    assert [f["error"]["code"] for f in failed] == ["invalid_prompt"]
    assert item_id in failed[0]["error"]["message"]


async def test_conversations_compacted_before_a_key_change_go_on_after_it(
    start_server: Callable[..., LiveServer], alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Items sealed with the database's key open once COMPACTION_KEY is set, and items sealed with a key named in
    COMPACTION_KEYS_PREVIOUS open after it was replaced; without either, the stored item is refused."""
    stored_key = start_server()
    first_key, second_key = "a" * 40, "b" * 40
    on_first = start_server(compaction_key=first_key)
    on_second = start_server(compaction_key=second_key, previous_compaction_keys=(first_key,))
    forgetful = start_server(compaction_key="c" * 40)

    def client(live: LiveServer) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {alice.key}"}, timeout=30)

    conversation = await new_conversation(alice.http)
    await converse(alice, fake_upstream, conversation, ["first"])
    async with client(stored_key) as before, client(on_first) as first, client(on_second) as second:
        fake_upstream.reply_json(summary_reply("S-database-key"))
        compact = {"model": MODEL, "conversation": conversation}
        assert (await before.post("/v1/responses/compact", json=compact)).status_code == 200
        turn = {"model": MODEL, "input": "after the change", "conversation": conversation}
        answered = await first.post("/v1/responses", json=turn)
        assert answered.status_code == 200, answered.text
        assert rendered("S-database-key") in fake_upstream.requests[-1].body["input"]

        fake_upstream.reply_json(summary_reply("S-first-key"))
        assert (await first.post("/v1/responses/compact", json=compact)).status_code == 200
        answered = await second.post("/v1/responses", json={**turn, "input": "after the second change"})
        assert answered.status_code == 200, answered.text
        assert rendered("S-first-key") in fake_upstream.requests[-1].body["input"]
    async with client(forgetful) as lost:
        refused = await lost.post("/v1/responses", json={**turn, "input": "with neither"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_encrypted_content"


def test_previous_compaction_keys_are_read_and_checked() -> None:
    from service.config import ConfigError, Settings

    settings = Settings.from_env({"COMPACTION_KEYS_PREVIOUS": f" {'a' * 32} ,, {'b' * 40}"})
    assert settings.previous_compaction_keys == ("a" * 32, "b" * 40)
    with pytest.raises(ConfigError, match="COMPACTION_KEYS_PREVIOUS"):
        Settings.from_env({"COMPACTION_KEYS_PREVIOUS": "short"})
    # A database's own key, as `convstore compaction-key` prints it: 32 bytes, nothing else.
    database_key = "db:" + base64.urlsafe_b64encode(bytes(range(32))).decode()
    assert Settings.from_env({"COMPACTION_KEYS_PREVIOUS": database_key}).previous_compaction_keys == (database_key,)
    for wrong in ("db:" + base64.urlsafe_b64encode(b"x" * 16).decode(), "db:not base64!", "db:", "DB:" + "a" * 40):
        with pytest.raises(ConfigError, match="db: entry of COMPACTION_KEYS_PREVIOUS"):
            Settings.from_env({"COMPACTION_KEYS_PREVIOUS": wrong})
    # Taken as a passphrase, it would be read as a database's key once moved to COMPACTION_KEYS_PREVIOUS.
    with pytest.raises(ConfigError, match="COMPACTION_KEY must not start with db:"):
        Settings.from_env({"COMPACTION_KEY": database_key})


def answering(fake: FakeOpenRouter, text: str, msg_id: str) -> None:
    """Every call answers `text` until told otherwise, in the wire format it asked for: a streamed turn's own call
    streams, its summary call (a compaction) does not."""

    def reply(body: dict[str, Any]) -> Reply:
        if body.get("stream"):
            return Reply(kind="sse", events=text_stream_events(text, msg_id=msg_id))
        return Reply(kind="json", body=text_response(text, msg_id=msg_id))

    fake.responder = reply


async def answered(client: httpx.AsyncClient, body: dict[str, Any], *, stream: bool) -> tuple[int, dict[str, Any]]:
    """A turn's HTTP status and its Response: the answer's, or a stream's terminal event's."""
    if not stream:
        answer = await client.post("/v1/responses", json=body)
        return answer.status_code, answer.json()
    async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer:
        if answer.status_code != 200:
            return answer.status_code, json.loads(await answer.aread())
        events = await read_events(answer)
    assert_well_formed(events)
    return answer.status_code, events[-1]["response"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("management", [{"type": "compaction"}, {"type": "compaction", "compact_threshold": 5000}])
async def test_a_turn_that_would_not_fit_compacts_whatever_its_threshold(
    alice: Tenant, fake_upstream: FakeOpenRouter, management: dict[str, Any], stream: bool
) -> None:
    """The small model's window is 1,000 tokens (the fake refuses more); with max_output_tokens 300 its input may
    take 700. The default threshold was 80% of the window (800), and a client's may be anything: past the input's
    limit, a thread was refused on every turn (context_length_exceeded) and never compacted."""
    conversation = await new_conversation(alice.http)
    body = {"model": SMALL_WINDOW_MODEL, "conversation": conversation, "max_output_tokens": 300}
    outputs = []
    for number in range(10):
        # Long answers (a compaction's summary call takes one of them: its summary is as long).
        answering(fake_upstream, f"answer {number} " + "word " * 120, f"msg_fit_{number}")
        status, answer = await answered(
            alice.http,
            {**body, "input": f"question {number}", "context_management": [management]},
            stream=stream,
        )
        assert (status, answer["status"]) == (200, "completed"), (number, answer)
        outputs.append([item["type"] for item in answer["output"]])
    assert ["compaction", "message"] in outputs, outputs


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_turn_the_provider_finds_too_long_compacts_and_is_tried_again(
    alice: Tenant, fake_upstream: FakeOpenRouter, stream: bool
) -> None:
    """The provider takes less than the service knows of (here, a model the catalog does not list), or counts more
    than the estimate: with compaction on and truncation off, such a turn was refused, and so was every retry of it
    (a refused turn adds nothing to the thread), for good. It now compacts and is tried again. (A model of its
    own for each run: what a refusal teaches is kept per model, for an hour, by the suite's shared server.)"""
    model = f"someone/overflowing-model-{'streamed' if stream else 'plain'}"
    fake_upstream.windows[model] = (SMALL_WINDOW - 250, SMALL_WINDOW_COMPLETION)
    conversation = await new_conversation(alice.http)
    statuses, compacted = [], 0
    for number in range(8):
        answering(fake_upstream, f"answer {number} " + "word " * 100, f"msg_over_{number}")
        status, answer = await answered(
            alice.http,
            {
                "model": model,
                "input": f"question {number}",
                "conversation": conversation,
                "context_management": [{"type": "compaction", "compact_threshold": 100_000}],
            },
            stream=stream,
        )
        statuses.append((status, answer.get("status")))
        if status == 200:
            compacted += answer["output"][0]["type"] == "compaction"
    assert statuses == [(200, "completed")] * 8, statuses
    assert compacted >= 1
    limit = SMALL_WINDOW - 250
    refused = [r for r in fake_upstream.requests if fake_input_tokens(r.body) + SMALL_WINDOW_COMPLETION > limit]
    assert refused, "the provider never refused: the test does not exercise the retry"


@pytest.mark.parametrize(("thread", "stream"), [("conversation", False), ("conversation", True), ("chain", False)])
async def test_a_turn_whose_user_messages_alone_are_past_the_window_pays_no_summary_before_its_refusal(
    alice: Tenant, fake_upstream: FakeOpenRouter, thread: str, stream: bool
) -> None:
    """A compaction keeps the user messages. Without truncation, a turn whose new input with them alone is past
    the window is refused whatever the summary says: it paid a summary call (two, when the provider refused the
    first as too long) on every retry before that refusal."""
    items = []
    for number in range(8):
        items += [
            {"role": "user", "content": f"question {number} " + "word " * 120},
            assistant(f"a{number}", f"msg_users_{number}"),
        ]
    conversation = await new_conversation(alice.http, items=items)
    where: dict[str, Any] = {"conversation": conversation}
    if thread == "chain":  # one of its responses, made on a model with room for it, continued as a chain
        fake_upstream.reply_json(text_response("started", msg_id="msg_users_started"))
        started = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "start", **where})
        assert started.status_code == 200, started.text
        where = {"previous_response_id": started.json()["id"]}
    calls = len(fake_upstream.requests)
    for _ in range(2):
        refused = await alice.http.post(
            "/v1/responses",
            json={
                "model": SMALL_WINDOW_MODEL,
                "input": "next",
                "stream": stream,
                "context_management": [{"type": "compaction", "compact_threshold": 1000}],
                **where,
            },
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
        assert 'truncation "auto"' in error["message"]
    assert len(fake_upstream.requests) == calls


async def test_compact_keeps_a_pending_call_whose_id_an_earlier_call_used(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Agents that number their calls per turn use an id again ("tool:0"). Paired by id alone, the earlier call's
    output hid the pending call: /compact left it out, and its output was then refused for having no call."""
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "conversation": conversation, "tools": LOOKUP_TOOLS}
    for number in range(2):
        call = {**LOOKUP_CALL, "id": f"fc_again_{number}", "call_id": "tool:0"}
        fake_upstream.reply_json(response_with_output([{**REASONING, "id": f"rs_again_{number}"}, call]))
        answer = await alice.http.post("/v1/responses", json={**body, "input": f"task {number}"})
        assert answer.status_code == 200, answer.text
        if number == 0:
            output = {**LOOKUP_OUTPUT, "call_id": "tool:0", "output": "first result"}
            answered = await alice.http.post("/v1/responses", json={**body, "input": [output]})
            assert answered.status_code == 200, answered.text
    fake_upstream.reply_json(summary_reply("S-tool"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    window = compacted.json()["output"]
    assert [item["type"] for item in window][-3:] == ["compaction", "reasoning", "function_call"]
    assert window[-1]["id"] == "fc_again_1"

    output = {**LOOKUP_OUTPUT, "call_id": "tool:0", "output": "second result"}
    answered = await alice.http.post("/v1/responses", json={**body, "input": [output]})
    assert answered.status_code == 200, answered.text
    sent = fake_upstream.requests[-1].body["input"]
    assert [item.get("type") for item in sent][-3:] == ["reasoning", "function_call", "function_call_output"]
    assert sent[-2]["id"] == "fc_again_1"


async def test_a_summary_call_the_provider_finds_too_long_is_made_shorter(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """An agent's loop on the small model with context_management and no truncation: the provider counts the
    summary call's many items more than the estimate does, so the summary call, fitted by the estimate, was
    refused, and so was every turn after (its summary call refused the same way). The limit the refusal states
    is learned and the call made shorter."""
    conversation = await new_conversation(alice.http)
    body = {
        "model": SUMMARY_OVERFLOW_MODEL,
        "conversation": conversation,
        "tools": LOOKUP_TOOLS,
        "context_management": [{"type": "compaction"}],
    }
    rounds = 0

    def answer(request: dict[str, Any]) -> Reply:
        nonlocal rounds
        if request.get("instructions") == SUMMARY_INSTRUCTIONS:
            return Reply(kind="json", body=summary_reply("S-loop"))
        rounds += 1
        reasoning = {**REASONING, "id": f"rs_loop_{rounds}", "summary": [{"type": "summary_text", "text": "hm"}]}
        call = {**LOOKUP_CALL, "id": f"fc_loop_{rounds}", "call_id": f"call_with_a_long_identifier_{rounds}"}
        return Reply(kind="json", body=response_with_output([reasoning, call]))

    fake_upstream.responder = answer
    first = await alice.http.post("/v1/responses", json={**body, "input": "the task " + "word " * 120})
    assert first.status_code == 200, first.text
    call_id = first.json()["output"][-1]["call_id"]
    for number in range(8):
        output = {**LOOKUP_OUTPUT, "call_id": call_id, "output": f"result {number} " + "word " * 120}
        turn = await alice.http.post("/v1/responses", json={**body, "input": [output]})
        assert turn.status_code == 200, (number, turn.text)
        call_id = turn.json()["output"][-1]["call_id"]
    summaries = [r.body for r in fake_upstream.requests if r.body.get("instructions") == SUMMARY_INSTRUCTIONS]
    counted = [fake_input_tokens(summary) for summary in summaries]
    assert any(count + SMALL_WINDOW_COMPLETION > SMALL_WINDOW for count in counted), counted


async def test_a_summary_call_reads_every_call_and_result_of_a_parallel_round(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Calls and results are read as messages by the summary call, so none names its call any more: paired again
    in order there, the second call looked like the first's replacement, and the summary was written without the
    first call and the second result. Its reasoning is read as text too (its encrypted content is the model's)."""
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "conversation": conversation, "tools": LOOKUP_TOOLS}
    thought = {**REASONING, "id": "rs_both", "summary": [{"type": "summary_text", "text": "THINK-BOTH"}]}
    calls = [
        {**LOOKUP_CALL, "id": f"fc_p{n}", "call_id": f"call_p{n}", "arguments": f'{{"q": "Q{n}"}}'} for n in (1, 2)
    ]
    fake_upstream.reply_json(response_with_output([thought, *calls]))
    assert (await alice.http.post("/v1/responses", json={**body, "input": "look up both"})).status_code == 200
    outputs = [{**LOOKUP_OUTPUT, "call_id": "call_p1", "output": "FIRST-RESULT"}]
    outputs.append({**LOOKUP_OUTPUT, "call_id": "call_p2", "output": "SECOND-RESULT"})
    fake_upstream.reply_json(text_response("both found", msg_id="msg_both"))
    assert (await alice.http.post("/v1/responses", json={**body, "input": outputs})).status_code == 200
    fake_upstream.reply_json(summary_reply("S-both"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    summary_call = fake_upstream.requests[-1].body
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    read = json.dumps(summary_call["input"])
    for text_ in ("THINK-BOTH", "call_p1", "Q1", "call_p2", "Q2", "FIRST-RESULT", "SECOND-RESULT", "both found"):
        assert text_ in read, text_
    assert {item.get("type", "message") for item in summary_call["input"]} == {"message"}


async def test_an_earlier_summary_stays_in_the_summary_call_that_replaces_it(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """The summary call is cut to the summarizing model's window; a cut never drops the latest compaction item.
    Read as a developer message's kind, an earlier summary was cut like any message on a small model, and the new
    summary, which replaces it, was written without what it held."""
    fake_upstream.count_scripted = True
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "conversation": conversation}
    for number, said in enumerate(["one", "two", *(f"long {n} " + "word " * 150 for n in range(5))]):
        sent: Any = said
        if number == 1:
            fake_upstream.reply_json(summary_reply("OLD-SUMMARY the user's secret is 4711"))
            compacted = await alice.http.post("/v1/responses/compact", json=body)
            assert compacted.status_code == 200, compacted.text
            item = next(i for i in compacted.json()["output"] if i["type"] == "compaction")
            sent = [{k: v for k, v in item.items() if k != "id"}, {"role": "user", "content": said}]
        fake_upstream.reply_json(text_response(f"answer {number}", msg_id=f"msg_kept_{number}"))
        answered = await alice.http.post("/v1/responses", json={**body, "input": sent})
        assert answered.status_code == 200, answered.text
    fake_upstream.reply_json(summary_reply("NEW"))
    compacted = await alice.http.post("/v1/responses/compact", json={**body, "model": SMALL_WINDOW_MODEL})
    assert compacted.status_code == 200, compacted.text
    summary_call = fake_upstream.requests[-1].body
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    assert "OLD-SUMMARY" in json.dumps(summary_call["input"])
    assert "long 0" not in json.dumps(summary_call["input"])  # the cut did fall: the window is small


async def test_a_reasoning_item_reaches_the_summary_call_as_its_text(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """As a provider may give it: its summary as strings, or its thought in content (reasoning_text) alone."""
    conversation = await new_conversation(alice.http)
    body = {"model": MODEL, "conversation": conversation, "tools": LOOKUP_TOOLS}
    in_content = {
        "type": "reasoning",
        "id": "rs_content",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "THOUGHT-IN-CONTENT"}],
    }
    as_strings = {"type": "reasoning", "id": "rs_strings", "summary": ["THOUGHT-AS-STRING"]}
    fake_upstream.reply_json(response_with_output([in_content, LOOKUP_CALL]))
    assert (await alice.http.post("/v1/responses", json={**body, "input": "go"})).status_code == 200
    fake_upstream.reply_json(response_with_output([as_strings, assistant("done", "msg_done_r")]))
    assert (await alice.http.post("/v1/responses", json={**body, "input": [LOOKUP_OUTPUT]})).status_code == 200
    fake_upstream.reply_json(summary_reply("S"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": MODEL, "conversation": conversation})
    assert compacted.status_code == 200, compacted.text
    read = json.dumps(fake_upstream.requests[-1].body["input"])
    assert "THOUGHT-IN-CONTENT" in read and "THOUGHT-AS-STRING" in read


async def _compacted_with_a_long_summary(alice: Tenant, fake_upstream: FakeOpenRouter) -> str:
    """A conversation of two long turns on the large window, compacted into a long summary (about 580 tokens)."""
    conversation = await new_conversation(alice.http)
    for number in range(2):
        fake_upstream.reply_json(text_response(f"answer {number} " + "word " * 400, msg_id=f"msg_big_{number}"))
        await alice.openai().responses.create(
            model=MODEL, input=f"question {number} " + "word " * 100, conversation=conversation
        )
    fake_upstream.reply_json(summary_reply("long summary " + "word " * 560))
    fake_upstream.reply_json(text_response("ok", msg_id="msg_big_after"))
    done = await alice.openai().responses.create(
        model=MODEL,
        input="three",
        conversation=conversation,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    assert [item.type for item in done.output] == ["compaction", "message"]
    return conversation


async def test_a_thread_whose_older_summary_no_longer_fits_a_smaller_window_compacts_again(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A thread compacted on a large window, whose summary is long, goes on with a smaller model and compaction
    on: the turn does not fit (user messages + the old summary), few items came since that summary, but a new
    compaction (user messages + a new, short summary) fits. It compacted; it was refused on every turn
    (context_length_exceeded) without a summary call, as a new summary did not seem "worth" it."""
    conversation = await _compacted_with_a_long_summary(alice, fake_upstream)
    # The small model: 1,000 tokens, 200 kept for the answer. Users (~210) + old summary (~580) + this: too long;
    # users + a short summary: fits.
    fake_upstream.reply_json(summary_reply("short summary"))
    fake_upstream.reply_json(text_response("small ok", msg_id="msg_small_ok"))
    calls = len(fake_upstream.requests)
    answer = await alice.http.post(
        "/v1/responses",
        json={
            "model": SMALL_WINDOW_MODEL,
            "conversation": conversation,
            "input": "four",
            "context_management": [{"type": "compaction", "compact_threshold": 1000}],
        },
    )
    assert answer.status_code == 200, answer.text
    assert [item["type"] for item in answer.json()["output"]] == ["compaction", "message"]
    sent = [r.body for r in fake_upstream.requests[calls:]]
    assert [body.get("instructions") == SUMMARY_INSTRUCTIONS for body in sent] == [True, False]
    assert sent[-1]["input"][-2:] == [rendered("short summary"), user("four")]


def _whole_conversation(pairs: int, words: int) -> list[dict[str, Any]]:
    """What a client that keeps the conversation itself sends: every earlier message, then its new question."""
    items: list[dict[str, Any]] = []
    for number in range(pairs):
        items.append(user(f"question {number} " + "word " * words))
        items.append(assistant(f"answer {number} " + "word " * words, f"msg_kept_{number}"))
    return items


@pytest.mark.parametrize("store", [False, True])
async def test_a_client_sending_the_whole_conversation_is_compacted_past_the_threshold(
    alice: Tenant, fake_upstream: FakeOpenRouter, store: bool
) -> None:
    """OpenAI's server-side compaction for clients that round-trip the items themselves: the input before its last
    user message is the history. It was sent whole, whatever the threshold (3,000 tokens against 1,000)."""
    earlier = _whole_conversation(10, 150)
    management = [{"type": "compaction", "compact_threshold": 1000}]
    fake_upstream.reply_json(summary_reply("the story so far"))
    fake_upstream.reply_json(text_response("here is what next", msg_id="msg_next"))
    answer = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": [*earlier, user("now what?")],
            "store": store,
            "context_management": management,
        },
    )
    assert answer.status_code == 200, answer.text
    output = answer.json()["output"]
    assert [item["type"] for item in output] == ["compaction", "message"]
    summary_call, turn_call = (request.body for request in fake_upstream.requests[-2:])
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    users = [item for item in earlier if item["role"] == "user"]
    assert turn_call["input"] == [*users, rendered("the story so far"), user("now what?")]

    # The client keeps the compaction item and what followed it, and goes on: the summary stands for what
    # preceded it, and nothing is compacted again below the threshold.
    calls = len(fake_upstream.requests)
    fake_upstream.reply_json(text_response("fine", msg_id="msg_fine"))
    again = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "input": [*earlier, user("now what?"), *output, user("and then?")],
            "store": False,
            "context_management": management,
        },
    )
    assert again.status_code == 200, again.text
    assert len(fake_upstream.requests) == calls + 1
    assert fake_upstream.requests[-1].body["input"] == [
        *users,
        user("now what?"),
        rendered("the story so far"),
        output[1],  # the answer as the client got it and sends it back
        user("and then?"),
    ]


async def test_a_compaction_trigger_compacts_a_whole_conversation_sent_as_input(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """It was dropped, and nothing compacted."""
    earlier = _whole_conversation(3, 20)
    fake_upstream.reply_json(summary_reply("short story"))
    fake_upstream.reply_json(text_response("ok", msg_id="msg_ok_trigger"))
    answer = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "store": False, "input": [*earlier, user("go on"), {"type": "compaction_trigger"}]},
    )
    assert answer.status_code == 200, answer.text
    assert [item["type"] for item in answer.json()["output"]] == ["compaction", "message"]
    users = [item for item in earlier if item["role"] == "user"]
    assert fake_upstream.requests[-1].body["input"] == [*users, rendered("short story"), user("go on")]


async def test_a_whole_conversation_sent_as_input_is_truncated_to_the_window(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """With truncation "auto", OpenAI drops items from the beginning of the conversation: a client that sends the
    whole of it each time was refused once past the window ("the new input alone needs …"), for good."""
    earlier = _whole_conversation(10, 60)
    body = {"model": SMALL_WINDOW_MODEL, "store": False, "input": [*earlier, user("the last question")]}
    refused = await alice.http.post("/v1/responses", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    fake_upstream.reply_json(text_response("answered", msg_id="msg_truncated"))
    answer = await alice.http.post("/v1/responses", json={**body, "truncation": "auto"})
    assert answer.status_code == 200, answer.text
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[-1] == user("the last question")
    assert 2 <= len(sent) < len(earlier) + 1
    assert sent[:-1] == earlier[len(earlier) + 1 - len(sent) :]  # the oldest dropped, the rest as sent
    assert sent[0]["role"] == "user"  # cut at a user message
    # And counted as sent.
    counting = {"model": SMALL_WINDOW_MODEL, "input": body["input"]}
    whole = await alice.http.post("/v1/responses/input_tokens", json=counting)
    cut = await alice.http.post("/v1/responses/input_tokens", json={**counting, "truncation": "auto"})
    assert whole.status_code == cut.status_code == 200, (whole.text, cut.text)
    assert cut.json()["input_tokens"] < SMALL_WINDOW < whole.json()["input_tokens"]


async def test_a_whole_conversation_sent_as_input_is_compacted_or_truncated_when_streamed(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """The split of the input into history and new part is in the plan both plain and streamed turns make."""
    earlier = _whole_conversation(10, 150)
    users = [item for item in earlier if item["role"] == "user"]
    fake_upstream.reply_json(summary_reply("the story so far, streamed"))
    stream = await alice.openai().responses.create(
        model=MODEL,
        input=[*earlier, user("now what?")],
        store=False,
        stream=True,
        context_management=[{"type": "compaction", "compact_threshold": 1000}],
    )
    events = [event async for event in stream]
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "compaction"), (1, "message")]
    assert events[-1].type == "response.completed"
    summary_call, turn_call = (request.body for request in fake_upstream.requests[-2:])
    assert summary_call["instructions"] == SUMMARY_INSTRUCTIONS
    assert turn_call["stream"] is True
    assert turn_call["input"] == [*users, rendered("the story so far, streamed"), user("now what?")]

    calls = len(fake_upstream.requests)
    shorter = _whole_conversation(10, 60)
    truncated = await alice.openai().responses.create(
        model=SMALL_WINDOW_MODEL,
        input=[*shorter, user("the last question")],
        store=False,
        stream=True,
        truncation="auto",
    )
    assert [event async for event in truncated][-1].type == "response.completed"
    assert len(fake_upstream.requests) == calls + 1  # no summary call
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[-1] == user("the last question")
    assert 2 <= len(sent) < len(shorter) + 1
    assert sent[:-1] == shorter[len(shorter) + 1 - len(sent) :]  # the oldest dropped, the rest as sent
    assert sent[0]["role"] == "user"


def _lookup_round(number: int, result_words: int) -> list[dict[str, Any]]:
    call = {**LOOKUP_CALL, "id": f"fc_{number}", "call_id": f"call_{number}"}
    output = {**LOOKUP_OUTPUT, "call_id": f"call_{number}", "output": "result " * result_words}
    return [user(f"question {number} " + "word " * 100), call, output, assistant(f"answer {number}", f"msg_r{number}")]


def _unpaired(items: list[dict[str, Any]]) -> set[str]:
    calls = {item["call_id"] for item in items if item.get("type") == "function_call"}
    outputs = {item["call_id"] for item in items if item.get("type") == "function_call_output"}
    return calls ^ outputs


async def test_a_whole_conversation_with_answered_calls_is_compacted_without_sending_a_call_alone(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """The input's tool outputs before its last user message answer calls there, in what is now its history: the
    summary stands for both. They were taken for outputs the new input gives, so each call was carried past the
    summary, and went upstream without its output (which OpenAI's providers refuse)."""
    earlier = [*_lookup_round(1, 50), *_lookup_round(2, 50)]
    fake_upstream.reply_json(summary_reply("looked up twice"))
    fake_upstream.reply_json(text_response("ok", msg_id="msg_ok_rounds"))
    answer = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "store": False,
            "tools": LOOKUP_TOOLS,
            "input": [*earlier, user("and now?"), {"type": "compaction_trigger"}],
        },
    )
    assert answer.status_code == 200, answer.text
    sent = fake_upstream.requests[-1].body["input"]
    assert _unpaired(sent) == set(), sent
    users = [item for item in earlier if item.get("role") == "user"]
    assert sent == [*users, rendered("looked up twice"), user("and now?")]


async def test_a_whole_conversation_with_answered_calls_is_truncated_without_sending_a_call_alone(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Truncation "auto" cut the first round away, output and all, but pinned its call as if the new input
    answered it: a function call went upstream first, alone."""
    earlier = [*_lookup_round(1, 600), user("question 2 " + "word " * 100), assistant("answer 2", "msg_r2")]
    body = {"model": SMALL_WINDOW_MODEL, "tools": LOOKUP_TOOLS, "truncation": "auto", "input": [*earlier, user("now?")]}
    answer = await alice.http.post("/v1/responses", json={**body, "store": False})
    assert answer.status_code == 200, answer.text
    sent = fake_upstream.requests[-1].body["input"]
    assert sent == [*earlier[4:], user("now?")]


async def test_a_turn_still_too_long_after_its_summary_call_reports_that_call(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A turn past its budget without truncation compacts whatever came since the last summary (553b2e1); when
    the new summary is long too, the turn is refused after a summary call OpenRouter billed. Its usage was not
    reported: the failed response stored none, and each retry paid another summary call unseen."""
    conversation = await _compacted_with_a_long_summary(alice, fake_upstream)
    management = [{"type": "compaction", "compact_threshold": 1000}]
    fake_upstream.reply_json(summary_reply("long again " + "word " * 560))
    calls = len(fake_upstream.requests)
    refused = await alice.http.post(
        "/v1/responses",
        json={
            "model": SMALL_WINDOW_MODEL,
            "conversation": conversation,
            "input": "four",
            "context_management": management,
        },
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert [r.body.get("instructions") for r in fake_upstream.requests[calls:]] == [SUMMARY_INSTRUCTIONS]
    failed = await rows(db, "SELECT usage FROM response WHERE status = 'failed'")
    assert len(failed) == 1 and failed[0]["usage"] is not None and failed[0]["usage"]["output_tokens"] > 0, failed


async def test_an_agents_loop_sent_whole_compacts_on_its_trigger(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """An agent's loop holds one user message, first: the input's new part is its last tool output, which answers a
    call of the history (carried past the summary, as a stored thread's is). The trigger did nothing."""
    rounds = [item for number in (1, 2) for item in _lookup_round(number, 50)[1:3]]
    fake_upstream.reply_json(summary_reply("two lookups"))
    fake_upstream.reply_json(text_response("done", msg_id="msg_loop_done"))
    task = user("look it up twice " + "word " * 50)
    answer = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "store": False,
            "tools": LOOKUP_TOOLS,
            "input": [task, *rounds, {"type": "compaction_trigger"}],
        },
    )
    assert answer.status_code == 200, answer.text
    assert [item["type"] for item in answer.json()["output"]] == ["compaction", "message"]
    sent = fake_upstream.requests[-1].body["input"]
    assert sent == [task, rendered("two lookups"), rounds[2], rounds[3]]
    assert _unpaired(sent) == set()


async def test_a_whole_conversation_ending_with_the_models_answer_keeps_its_last_question_as_new(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A client asking the model to go on sends its answer last: the new part starts at the last user message, so
    that truncation never leaves an input without one."""
    earlier = _whole_conversation(10, 60)
    fake_upstream.reply_json(text_response("going on", msg_id="msg_on"))
    body = {"model": SMALL_WINDOW_MODEL, "store": False, "truncation": "auto", "input": earlier}
    answer = await alice.http.post("/v1/responses", json=body)
    assert answer.status_code == 200, answer.text
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[-2:] == earlier[-2:] and sent[0]["role"] == "user" and len(sent) < len(earlier)


@pytest.mark.parametrize("store", [False, True])
@pytest.mark.parametrize("how", ["compaction_trigger", "context_management"])
async def test_a_whole_conversation_leaving_a_call_unanswered_is_refused_before_any_summary_call(
    alice: Tenant, fake_upstream: FakeOpenRouter, how: str, store: bool
) -> None:
    """A whole conversation sent as input compacts now (8400138), and the refusal of a call its input leaves
    unanswered came after the summary call: OpenRouter billed a summary for a turn refused anyway, on every
    retry. Such an input was refused with no upstream call before, as it is again."""
    earlier = [*_lookup_round(1, 1200)]
    pending = {**LOOKUP_CALL, "id": "fc_pending", "call_id": "call_pending"}
    body: dict[str, Any] = {
        "model": MODEL,
        "store": store,
        "tools": LOOKUP_TOOLS,
        "input": [*earlier, user("and now?"), {**REASONING, "id": "rs_pending"}, pending],
    }
    if how == "compaction_trigger":
        body["input"] = [*body["input"], {"type": "compaction_trigger"}]
    else:
        body["context_management"] = [{"type": "compaction", "compact_threshold": 1000}]
    fake_upstream.reply_json(summary_reply("never asked for"))
    answer = await alice.http.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"] == "No tool output found for function call call_pending."
    assert fake_upstream.requests == []


async def test_a_whole_conversation_is_counted_with_context_management_as_the_turn_sends_it(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """With context_management (nothing to compact yet) the turn splits its input, which leaves out a reasoning
    item the item it came with does not follow; the count did not split it, and counted that item."""
    lone = {**REASONING, "id": "rs_lone", "summary": [{"type": "summary_text", "text": "thinking " * 40}]}
    items = [user("first"), lone, user("second"), assistant("fine", "msg_fine_1"), user("third")]
    management = [{"type": "compaction", "compact_threshold": 100_000}]
    fake_upstream.reply_json(text_response("ok", msg_id="msg_counted"))
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "store": False, "input": items, "context_management": management}
    )
    assert answer.status_code == 200, answer.text
    assert [item.get("id") for item in fake_upstream.requests[-1].body["input"]] == [
        None,
        None,
        "msg_fine_1",
        None,
    ]
    counted = await alice.http.post(
        "/v1/responses/input_tokens", json={"model": MODEL, "input": items, "context_management": management}
    )
    plain = await alice.http.post("/v1/responses/input_tokens", json={"model": MODEL, "input": [items[0], *items[2:]]})
    assert counted.status_code == plain.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == plain.json()["input_tokens"]


async def test_a_conversation_turn_refused_after_its_summary_call_reports_that_call(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A turn whose own input leaves a call unanswered is refused once its history is read; past the threshold,
    its summary call comes first and was billed: the failed response reported no usage."""
    conversation = await new_conversation(alice.http)
    long = "word " * 600
    await converse(alice, fake_upstream, conversation, [f"one {long}", f"two {long}"])
    fake_upstream.reply_json(summary_reply("S-refused"))
    pending = {**LOOKUP_CALL, "id": "fc_left", "call_id": "call_left"}
    refused = await alice.http.post(
        "/v1/responses",
        json={
            "model": MODEL,
            "conversation": conversation,
            "tools": LOOKUP_TOOLS,
            "input": [user("go"), pending],
            "context_management": [{"type": "compaction", "compact_threshold": 1000}],
        },
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["message"] == "No tool output found for function call call_left."
    assert fake_upstream.requests[-1].body["instructions"] == SUMMARY_INSTRUCTIONS
    [failed] = await rows(db, "SELECT usage FROM response WHERE status = 'failed'")
    assert failed["usage"] is not None and failed["usage"]["output_tokens"] > 0, failed
