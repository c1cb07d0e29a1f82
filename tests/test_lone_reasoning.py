"""A reasoning item goes upstream only before the item it came with (its answer's message, or a tool call).

OpenAI refuses a reasoning item followed by anything else ("Item 'rs_…' of type 'reasoning' was provided without
its required following item"), and a thread that stored one sent it on every later turn: stuck. It happens to a
reasoning model cut off at max_output_tokens while it still reasoned (an `incomplete` answer holding only its
reasoning), and when the item after a reasoning item is deleted through the items API. Such an item stays stored
and listed, and is left out of what is sent; a reasoning item with its message or call is sent as it was. Both
with a model whose window the catalog gives (the history counted) and one it does not (otherwise sent as read),
in both continuation styles."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant
from tests.fake_openrouter import SMALL_WINDOW_MODEL, FakeOpenRouter, response_with_output, text_response
from tests.stream_support import final_response
from tests.test_truncated_tool_calls import CALL, OUTPUT, REASONING, STYLES, TOOLS, new_thread, words
from tests.turn_support import MODEL, assistant, list_all, user

MODELS = (SMALL_WINDOW_MODEL, MODEL)
# What a reasoning model answers when max_output_tokens runs out before it says anything.
ONLY_REASONING = response_with_output(
    [REASONING], status="incomplete", incomplete_details={"reason": "max_output_tokens"}
)


async def send(
    tenant: Tenant, thread: dict[str, str], model: str, input_: Any, *, stream: bool = False, **fields: Any
) -> dict[str, Any]:
    body = {"model": model, "input": input_, **thread, "tools": TOOLS, **fields}
    response = await final_response(tenant.http, body, stream=stream)
    assert response["status"] in ("completed", "incomplete"), response
    if "conversation" not in thread:
        thread["previous_response_id"] = response["id"]
    return dict(response)


def sent(fake_upstream: FakeOpenRouter) -> list[dict[str, Any]]:
    return list(fake_upstream.requests[-1].body["input"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("style", STYLES)
async def test_an_answer_cut_off_while_it_reasoned_does_not_stop_its_thread(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str, style: str
) -> None:
    thread = await new_thread(alice, style)
    fake_upstream.reply_json(ONLY_REASONING)
    cut = await send(alice, thread, model, "a hard question", max_output_tokens=16)
    assert cut["status"] == "incomplete" and [item["type"] for item in cut["output"]] == ["reasoning"]

    await send(alice, thread, model, "try again with more room")
    assert sent(fake_upstream) == [user("a hard question"), user("try again with more room")]
    await send(alice, thread, model, "and streamed", stream=True)
    assert [item.get("type") for item in sent(fake_upstream)] == ["message"] * 4
    assert sent(fake_upstream)[:2] == [user("a hard question"), user("try again with more room")]

    # Nothing stored was dropped.
    shown = await alice.http.get(f"/v1/responses/{cut['id']}")
    assert [item["type"] for item in shown.json()["output"]] == ["reasoning"]
    if style == "conversation":
        stored = await list_all(alice.http, f"/v1/conversations/{thread['conversation']}/items", order="asc")
        assert [item["type"] for item in stored][:3] == ["message", "reasoning", "message"]


async def test_input_tokens_counts_what_would_be_sent(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """The count leaves the lone reasoning item out, as the turn would: the same as once it is deleted."""
    thread = await new_thread(alice, "conversation")
    fake_upstream.reply_json(ONLY_REASONING)
    await send(alice, thread, MODEL, "a hard question")
    body = {"model": MODEL, "input": "go on", **thread}
    counted = await alice.http.post("/v1/responses/input_tokens", json=body)
    assert counted.status_code == 200, counted.text
    deleted = await alice.http.delete(f"/v1/conversations/{thread['conversation']}/items/{REASONING['id']}")
    assert deleted.status_code == 200, deleted.text
    without = await alice.http.post("/v1/responses/input_tokens", json=body)
    assert counted.json()["input_tokens"] == without.json()["input_tokens"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_reasoning_item_with_its_message_or_its_call_is_sent_as_it_was(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    thread = await new_thread(alice, "conversation")
    answer = assistant("Three.", "msg_three")
    fake_upstream.reply_json(response_with_output([REASONING, answer]))
    await send(alice, thread, model, "how many r's in strawberry?")
    reasoned_call = {**REASONING, "id": "rs_2"}
    fake_upstream.reply_json(response_with_output([reasoned_call, CALL]))
    await send(alice, thread, model, "look it up")
    await send(alice, thread, model, [OUTPUT])
    assert sent(fake_upstream) == [
        user("how many r's in strawberry?"),
        REASONING,
        answer,
        user("look it up"),
        reasoned_call,
        CALL,
        OUTPUT,
    ]


@pytest.mark.parametrize("model", MODELS)
async def test_a_reasoning_item_whose_call_was_deleted_is_not_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    """The call goes through the items API, and with it what made its reasoning and its output sendable."""
    thread = await new_thread(alice, "conversation")
    fake_upstream.reply_json(response_with_output([REASONING, CALL]))
    await send(alice, thread, model, "look it up")
    fake_upstream.reply_json(text_response("It is there.", msg_id="msg_there"))
    await send(alice, thread, model, [OUTPUT])
    deleted = await alice.http.delete(f"/v1/conversations/{thread['conversation']}/items/{CALL['id']}")
    assert deleted.status_code == 200, deleted.text

    await send(alice, thread, model, "thanks")
    assert sent(fake_upstream) == [
        user("look it up"),
        assistant("It is there.", "msg_there"),
        user("thanks"),
    ]


async def test_a_truncated_history_leaves_out_a_lone_reasoning_item_after_the_cut(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """truncation "auto" on the small model (1,000 tokens, 200 kept for the answer): the cut drops the first turn,
    and what it keeps holds the reasoning item of an answer cut off while it reasoned."""
    fake_upstream.count_scripted = True
    thread = await new_thread(alice, "conversation")
    auto = {"truncation": "auto"}
    await send(alice, thread, SMALL_WINDOW_MODEL, words(400, "first"), **auto)
    fake_upstream.reply_json(ONLY_REASONING)
    await send(alice, thread, SMALL_WINDOW_MODEL, "second", **auto)
    await send(alice, thread, SMALL_WINDOW_MODEL, words(400, "third"), **auto)
    assert sent(fake_upstream) == [user("second"), user(words(400, "third"))]


@pytest.mark.parametrize("style", STYLES)
async def test_a_lone_reasoning_item_stays_out_once_an_instruction_follows_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, style: str
) -> None:
    """A developer (or system) message is no item a reasoning item came with: left out when it ended the history,
    the reasoning item was sent again on the turn after, before that message."""
    thread = await new_thread(alice, style)
    fake_upstream.reply_json(ONLY_REASONING)
    await send(alice, thread, MODEL, "a hard question")
    developer = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]}
    await send(alice, thread, MODEL, [developer])
    await send(alice, thread, MODEL, "next")
    assert "reasoning" not in [item.get("type") for item in sent(fake_upstream)]
    assert sent(fake_upstream)[:2] == [user("a hard question"), developer]


async def test_a_lone_reasoning_item_stays_out_once_an_instruction_is_added_after_it(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    thread = await new_thread(alice, "conversation")
    fake_upstream.reply_json(ONLY_REASONING)
    await send(alice, thread, MODEL, "a hard question")
    system = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "be kind"}]}
    added = await alice.http.post(f"/v1/conversations/{thread['conversation']}/items", json={"items": [system]})
    assert added.status_code == 200, added.text
    await send(alice, thread, MODEL, "go on")
    assert sent(fake_upstream) == [user("a hard question"), system, user("go on")]
