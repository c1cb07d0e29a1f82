"""A thread a user keeps using never reaches a state where every next turn fails.

The fake OpenRouter here refuses, as a provider does, an input array that breaks the Responses API's rules
(`strict_provider`): a tool output without its call before it, a call without its output after it, a reasoning
item not followed by the item it came with, an assistant message without its id or status, content parts of
the other side's types, two items with one id. Each test drives a thread into an odd but accepted state through
the HTTP API, then checks the exact array sent and that the next turn goes through."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Tenant
from tests.fake_openrouter import (
    FakeOpenRouter,
    Reply,
    response_with_output,
    text_response,
    text_stream_events,
)
from tests.stream_support import parse_sse
from tests.test_truncated_tool_calls import CALL, OUTPUT, REASONING, TOOLS
from tests.turn_support import MODEL, new_conversation, user

_TOOL_CALLS = {"function_call": "function_call_output", "custom_tool_call": "custom_tool_call_output"}
_TOOL_OUTPUTS = set(_TOOL_CALLS.values())


def provider_refusal(input_: Any) -> str | None:
    """Why a provider would refuse this input array; None when it would take it."""
    if isinstance(input_, str):
        return None
    seen_ids: set[str] = set()
    waiting: dict[str, int] = {}
    for index, item in enumerate(input_):
        kind = item.get("type", "message")
        item_id = item.get("id")
        if item_id is not None:
            if item_id in seen_ids:
                return f"Duplicate item found with id {item_id}"
            seen_ids.add(item_id)
        if kind == "message":
            role = item.get("role")
            parts = item.get("content")
            if role == "assistant":
                if item.get("id") is None or item.get("status") is None:
                    return f"input[{index}]: an assistant message needs its id and status"
                allowed = {"output_text", "refusal"}
            else:
                allowed = {"input_text", "input_image", "input_file", "input_audio"}
            if isinstance(parts, list):
                for part in parts:
                    if part.get("type") not in allowed:
                        return f"input[{index}]: Invalid value {part.get('type')!r} for a {role} message"
        elif kind == "reasoning":
            following = input_[index + 1] if index + 1 < len(input_) else None
            if (
                following is None
                or following.get("type", "message") in {"reasoning", *_TOOL_OUTPUTS}
                or (following.get("type", "message") == "message" and following.get("role") != "assistant")
            ):
                return f"Item '{item_id}' of type 'reasoning' was provided without its required following item."
        elif kind in _TOOL_CALLS:
            waiting[item["call_id"]] = index
        elif kind in _TOOL_OUTPUTS and waiting.pop(item.get("call_id"), None) is None:
            return f"No tool call found for function call output with call_id {item.get('call_id')}."
    if waiting:
        return f"No tool output found for function call {next(iter(waiting))}."
    return None


def strict_provider(fake: FakeOpenRouter) -> None:
    """The fake answers as usual, but refuses what a provider refuses, with OpenRouter's 400 body."""

    def answer(body: dict[str, Any]) -> Reply:
        reason = provider_refusal(body.get("input"))
        if reason is not None:
            error = {"error": {"code": 400, "message": reason, "metadata": {"provider_name": "Strict"}}}
            return Reply(kind="json", status=400, body=error)
        if body.get("stream"):
            return Reply(kind="sse", events=text_stream_events(fake.default_text))
        return Reply(kind="json", body=text_response(fake.default_text))

    fake.responder = answer


def check_sent(fake: FakeOpenRouter) -> list[dict[str, Any]]:
    """The last array sent, which the strict provider must take."""
    sent: list[dict[str, Any]] = fake.requests[-1].body["input"]
    assert provider_refusal(sent) is None, (provider_refusal(sent), sent)
    return sent


async def post_turn(tenant: Tenant, **body: Any) -> Any:
    body.setdefault("model", MODEL)
    return await tenant.http.post("/v1/responses", json=body)


async def ok_turn(tenant: Tenant, fake: FakeOpenRouter, **body: Any) -> dict[str, Any]:
    answer = await post_turn(tenant, **body)
    assert answer.status_code == 200, answer.text
    check_sent(fake)
    result: dict[str, Any] = answer.json()
    return result


@pytest.fixture(autouse=True)
def _strict(fake_upstream: FakeOpenRouter) -> None:
    strict_provider(fake_upstream)


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What was sent, its items' ids (renewed by an import) left out."""
    return [{k: v for k, v in item.items() if k != "id"} for item in items]


async def import_conversation(tenant: Tenant, *items: dict[str, Any]) -> str:
    header = {"object": "conversation", "id": "conv_file", "created_at": 1700000000, "metadata": {}}
    body = "".join(json.dumps(line) + "\n" for line in (header, *items)).encode()
    answer = await tenant.http.post(
        "/v1/conversations/import", content=body, headers={"Content-Type": "application/jsonl"}
    )
    assert answer.status_code == 200, answer.text
    conversation_id: str = answer.json()["id"]
    return conversation_id


def message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


SENT_USER_Q = user("q")
SENT_NEXT = user("next")
SENT_CALL = {k: v for k, v in CALL.items() if k != "id"}
HAND_WRITTEN = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]}


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        # A reasoning item ending the history, or before a user message: left out.
        ([message("user", "q"), REASONING], [SENT_USER_Q, SENT_NEXT]),
        ([message("user", "q"), REASONING, message("user", "q")], [SENT_USER_Q, SENT_USER_Q, SENT_NEXT]),
        # A call left unanswered before a later user message, finished or not: left out.
        ([message("user", "q"), CALL, message("user", "q")], [SENT_USER_Q, SENT_USER_Q, SENT_NEXT]),
        (
            [message("user", "q"), {**CALL, "status": "in_progress"}, message("user", "q")],
            [SENT_USER_Q, SENT_USER_Q, SENT_NEXT],
        ),
        # An output whose call is nowhere: left out.
        ([message("user", "q"), OUTPUT], [SENT_USER_Q, SENT_NEXT]),
        # A reasoning item between a call and its output: the call and output go, the reasoning item does not.
        ([message("user", "q"), CALL, REASONING, OUTPUT], [SENT_USER_Q, SENT_CALL, OUTPUT, SENT_NEXT]),
        # An assistant message with an id and no status, or input_text parts: completed as OpenRouter needs it.
        (
            [message("user", "q"), {**HAND_WRITTEN, "id": "msg_hand"}],
            [SENT_USER_Q, {**HAND_WRITTEN, "status": "completed"}, SENT_NEXT],
        ),
        (
            [message("user", "q"), {**HAND_WRITTEN, "content": [{"type": "input_text", "text": "a"}]}],
            [
                SENT_USER_Q,
                {
                    **HAND_WRITTEN,
                    "content": [{"type": "output_text", "text": "a", "annotations": []}],
                    "status": "completed",
                },
                SENT_NEXT,
            ],
        ),
    ],
    ids=[
        "reasoning-last",
        "reasoning-before-user",
        "call-before-user",
        "in-progress-call-before-user",
        "output-alone",
        "reasoning-between-call-and-output",
        "assistant-without-status",
        "assistant-with-input-parts",
    ],
)
async def test_an_imported_conversations_odd_items_never_make_an_array_a_provider_refuses(
    alice: Tenant, fake_upstream: FakeOpenRouter, items: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    """An import takes what an export may hold (whatever an upstream answered, however a thread was edited):
    the next turn sends only what a provider takes, and so does the one after it."""
    conversation_id = await import_conversation(alice, *items)
    await ok_turn(alice, fake_upstream, input="next", conversation=conversation_id, tools=TOOLS)
    sent = check_sent(fake_upstream)
    assert without_ids(sent) == expected
    assert all(isinstance(item.get("id"), str) for item in sent if item.get("role") == "assistant")
    await ok_turn(alice, fake_upstream, input="and then", conversation=conversation_id, tools=TOOLS)
    assert without_ids(check_sent(fake_upstream))[: len(expected)] == expected


async def test_a_chain_from_a_conversations_response_whose_call_was_deleted_leaves_its_output_out(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A response of a conversation continued by `previous_response_id` sees what precedes it in the
    conversation: once the call is deleted there, its output is not sent alone, in the chain as in the
    conversation."""
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([CALL]))
    await ok_turn(alice, fake_upstream, input="look", conversation=conversation_id, tools=TOOLS)
    fake_upstream.reply_json(text_response("it is there", msg_id="msg_there"))
    answered = await ok_turn(alice, fake_upstream, input=[OUTPUT], conversation=conversation_id, tools=TOOLS)
    deleted = await alice.http.delete(f"/v1/conversations/{conversation_id}/items/{CALL['id']}")
    assert deleted.status_code == 200, deleted.text
    there = {
        "type": "message",
        "id": "msg_there",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "it is there", "annotations": []}],
    }

    await ok_turn(alice, fake_upstream, input="hi", previous_response_id=answered["id"], tools=TOOLS)
    assert check_sent(fake_upstream) == [user("look"), there, user("hi")]
    await ok_turn(alice, fake_upstream, input="hi", conversation=conversation_id, tools=TOOLS)
    assert check_sent(fake_upstream) == [user("look"), there, user("hi")]


CALL_2 = {**CALL, "id": "fc_2", "call_id": "call_2"}
OUTPUT_2 = {**OUTPUT, "call_id": "call_2", "output": "second"}


async def test_parallel_calls_answered_in_part_are_refused_until_all_are_answered(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Answering one of two parallel calls (in a turn, or through the items API and then a new question) is
    OpenAI's 400 with nothing sent; answering the other then sends both pairs after the reasoning item."""
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([REASONING, CALL, CALL_2]))
    await ok_turn(alice, fake_upstream, input="two lookups", conversation=conversation_id, tools=TOOLS)
    calls = len(fake_upstream.requests)
    unanswered = {
        "message": "No tool output found for function call call_2.",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }
    refused = await post_turn(alice, input=[OUTPUT], conversation=conversation_id, tools=TOOLS)
    assert refused.status_code == 400 and refused.json()["error"] == unanswered
    added = await alice.http.post(f"/v1/conversations/{conversation_id}/items", json={"items": [OUTPUT]})
    assert added.status_code == 200, added.text
    refused = await post_turn(alice, input="a new question", conversation=conversation_id, tools=TOOLS)
    assert refused.status_code == 400 and refused.json()["error"] == unanswered
    assert len(fake_upstream.requests) == calls

    await ok_turn(alice, fake_upstream, input=[OUTPUT_2], conversation=conversation_id, tools=TOOLS)
    assert check_sent(fake_upstream) == [user("two lookups"), REASONING, CALL, CALL_2, OUTPUT, OUTPUT_2]


@pytest.mark.parametrize(("thread", "stream"), [("conversation", False), ("conversation", True), ("chain", False)])
async def test_a_long_thread_moved_to_an_unlisted_model_answers_from_its_first_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, thread: str, stream: bool
) -> None:
    """A thread about 100 times past a window that neither the catalog nor the provider's refusal states: each
    refused try shrank what was sent by a fifth, three tries a turn, and seven turns in a row failed with
    context_length_exceeded before one fitted. A turn's last try now sends only its new input; the budget
    remembered for the model comes down fast enough that later turns take one call again, with history. (A model
    of its own for each case: the suite's shared server remembers budgets per model.)"""
    model = f"someone/unlisted-bare-long-{thread}-{'streamed' if stream else 'plain'}"
    fake_upstream.windows[model] = (1000, 200)
    fake_upstream.overflow_wording = "bare"
    items = []
    for index in range(5000):
        items += [message("user", f"question {index} about things"), message("assistant", f"answer {index}")]
    conversation_id = await import_conversation(alice, *items)
    where = {"conversation": conversation_id}
    if thread == "chain":  # one of its responses, made on a model with room for it, continued as a chain
        started = await post_turn(alice, input="start", conversation=conversation_id)
        assert started.status_code == 200, started.text
        where = {"previous_response_id": started.json()["id"]}

    calls_per_turn = []
    for index in range(8):
        calls = len(fake_upstream.requests)
        answer = await post_turn(alice, model=model, input=f"turn {index}", truncation="auto", stream=stream, **where)
        assert answer.status_code == 200, (index, answer.text)
        response = [data for _, data in parse_sse(answer.text)][-1]["response"] if stream else answer.json()
        assert response["status"] == "completed", (index, response)
        if thread == "chain":
            where = {"previous_response_id": response["id"]}
        calls_per_turn.append(len(fake_upstream.requests) - calls)
        sent = check_sent(fake_upstream)
        assert sent[-1] == user(f"turn {index}")
        if index == 0:
            assert sent == [user("turn 0")]  # the last of three tries: no history
        if calls_per_turn[-1] == 1:
            break
    assert calls_per_turn[0] == 3 and calls_per_turn[-1] == 1, calls_per_turn
    assert len(calls_per_turn) <= 6, calls_per_turn
    assert len(sent) > 1 and sent[0]["role"] == "user"  # history again, from a turn boundary


async def test_a_large_new_input_past_a_guessed_budget_is_sent_alone_and_the_budget_keeps_what_was_taken(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A refusal without numbers shrinks what was sent by a guess. A new input larger than that guess, but within
    the window, was refused as "the new input alone needs about N tokens" (N past the guess, not the window), and
    so was every later turn with such an input, before any call, for as long as the guess was remembered."""
    model = "someone/unlisted-bare-large-input"
    fake_upstream.windows[model] = (1000, 200)  # the input may take 800 tokens, by the fake provider's count
    fake_upstream.overflow_wording = "bare"
    conversation_id = await import_conversation(alice, message("user", "hello there"), message("assistant", "hi"))
    calls_per_turn = []
    for index in range(2):
        calls = len(fake_upstream.requests)
        text = f"turn {index} " + "word " * 775  # alone within the window; with the history, past it
        answer = await post_turn(alice, model=model, input=text, conversation=conversation_id, truncation="auto")
        assert answer.status_code == 200, (index, answer.text)
        calls_per_turn.append(len(fake_upstream.requests) - calls)
        assert check_sent(fake_upstream) == [user(text)]
    assert calls_per_turn == [2, 1]


async def test_a_last_try_answering_a_call_sends_the_call_with_its_answer(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """The last try sends only the new input and what must go with it: a tool output goes with its call (and the
    reasoning item before it), which a provider refuses to take without."""
    model = "someone/unlisted-bare-long-tool-output"
    fake_upstream.windows[model] = (1000, 200)
    fake_upstream.overflow_wording = "bare"
    items = []
    for index in range(5000):
        items += [message("user", f"question {index} about things"), message("assistant", f"answer {index}")]
    conversation_id = await import_conversation(alice, *items, message("user", "look it up"), REASONING, CALL)
    calls = len(fake_upstream.requests)
    answer = await post_turn(
        alice, model=model, input=[OUTPUT], conversation=conversation_id, tools=TOOLS, truncation="auto"
    )
    assert answer.status_code == 200, answer.text
    assert len(fake_upstream.requests) - calls == 3
    assert without_ids(check_sent(fake_upstream)) == without_ids([REASONING, SENT_CALL, OUTPUT])


async def test_a_budget_guessed_from_refusals_never_refuses_a_larger_new_input_before_a_call(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Refusals without numbers (here of a turn asking more room for its answer than the window has) teach the
    model a guessed budget. A new input past that guess, on any thread of the model, even a new one, was refused
    as "the new input alone needs about N tokens" before any call, so no call could raise the guess again: every
    such turn of the model failed for an hour, though the window takes it."""
    model = "someone/unlisted-bare-guess"
    fake_upstream.windows[model] = (1000, 200)
    fake_upstream.overflow_wording = "bare"
    await _asked_more_room_for_its_answer_than_the_window_has(alice, model)
    other = await new_conversation(bob.http)
    text = "word " * 100  # far within the window, past the guess
    calls = len(fake_upstream.requests)
    answer = await post_turn(bob, model=model, input=text, conversation=other, truncation="auto")
    assert answer.status_code == 200, answer.text
    assert check_sent(fake_upstream) == [user(text)]
    assert len(fake_upstream.requests) - calls == 1
    # The same for a previous_response_id chain's turn.
    chained = await post_turn(bob, model=model, input=text, previous_response_id=answer.json()["id"], truncation="auto")
    assert chained.status_code == 200, chained.text
    assert len(fake_upstream.requests) - calls == 2


async def test_a_refusal_of_the_answers_room_leaves_other_threads_their_history(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A refusal stating that the room asked for the answer alone is past the window (max_output_tokens too
    large) was taken for an input too long: the turn was tried three times, shorter each time, and the budget
    learned from it, a fraction of one short thread, refused every other thread's turns on that model."""
    model = "someone/unlisted-answer-room"
    fake_upstream.windows[model] = (1000, 200)
    calls = len(fake_upstream.requests)
    refused = await _asked_more_room_for_its_answer_than_the_window_has(alice, model)
    assert "5000 in the output" in refused.json()["error"]["message"]
    assert len(fake_upstream.requests) - calls == 1  # no shorter input helps
    other = await new_conversation(bob.http)
    for index in range(3):
        calls = len(fake_upstream.requests)
        text = f"turn {index} " + "word " * 40
        answer = await post_turn(bob, model=model, input=text, conversation=other, truncation="auto")
        assert answer.status_code == 200, answer.text
        assert len(fake_upstream.requests) - calls == 1
        assert len(check_sent(fake_upstream)) == 2 * index + 1  # the whole thread


async def _asked_more_room_for_its_answer_than_the_window_has(alice: Tenant, model: str) -> httpx.Response:
    """A short thread's turn with max_output_tokens past the model's whole window: refused by the provider."""
    conversation_id = await import_conversation(alice, message("user", "hello there"), message("assistant", "hi"))
    refused = await post_turn(
        alice,
        model=model,
        input="write a book",
        conversation=conversation_id,
        truncation="auto",
        max_output_tokens=5000,
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    return refused
