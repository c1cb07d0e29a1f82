"""Truncation never sends a tool output without its call: an output whose call the cut dropped is left out,
and a call that the new input answers is sent with it (and with the reasoning item it came with), wherever the
cut fell. The fake OpenRouter enforces its small model's window (1,000 tokens, 200 kept for the answer)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant
from tests.fake_openrouter import (
    SMALL_WINDOW_MODEL,
    FakeOpenRouter,
    Reply,
    output_stream_events,
    response_with_output,
    text_response,
)
from tests.stream_support import final_response
from tests.turn_support import assistant, new_conversation, user

TOOLS = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "I should look it up."}],
    "encrypted_content": "gAAAA-opaque",
}
CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "lookup",
    "arguments": "{}",
    "status": "completed",
}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "found it"}


def words(n: int, tag: str) -> str:
    return tag + " " + " ".join(["word"] * n)


@pytest.fixture(autouse=True)
def _realistic_usage(fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.count_scripted = True


# The two ways a client continues a thread: in a conversation, or by chaining responses.
STYLES = ("conversation", "previous_response_id")


async def new_thread(tenant: Tenant, style: str = "conversation") -> dict[str, str]:
    """What a turn names to continue the thread: its conversation, or (after the first turn) its last response."""
    return {"conversation": await new_conversation(tenant.http)} if style == "conversation" else {}


async def send(tenant: Tenant, thread: dict[str, str], input_: Any, *, stream: bool = False) -> None:
    body = {"model": SMALL_WINDOW_MODEL, "input": input_, **thread, "tools": TOOLS, "truncation": "auto"}
    response = await final_response(tenant.http, body, stream=stream)
    assert response["status"] == "completed", response
    if "conversation" not in thread:
        thread["previous_response_id"] = response["id"]


async def test_a_new_input_answering_a_cut_call_is_sent_with_the_call_and_its_reasoning(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    thread = await new_thread(alice)
    await send(alice, thread, words(250, "first"))
    # A long question whose answer is a call: with the output, the turn cannot keep that question.
    fake_upstream.reply_json(response_with_output([REASONING, CALL]))
    await send(alice, thread, words(480, "second"))
    fake_upstream.reply_json(text_response("done", msg_id="msg_done"))
    await send(alice, thread, [{**OUTPUT, "output": words(300, "result")}])
    assert fake_upstream.requests[-1].body["input"] == [REASONING, CALL, {**OUTPUT, "output": words(300, "result")}]


async def test_a_new_input_that_cannot_fit_with_the_call_it_answers_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    thread = await new_thread(alice)
    big_call = {**CALL, "arguments": '{"q": "' + " ".join(["word"] * 450) + '"}'}
    fake_upstream.reply_json(response_with_output([big_call]))
    await send(alice, thread, "go")
    calls = len(fake_upstream.requests)
    answer = await alice.http.post(
        "/v1/responses",
        json={
            "model": SMALL_WINDOW_MODEL,
            "input": [{**OUTPUT, "output": words(400, "result")}],
            **thread,
            "tools": TOOLS,
            "truncation": "auto",
        },
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert answer.json()["error"]["param"] == "input"
    assert len(fake_upstream.requests) == calls


# Every kind of call and the item answering it (OpenAI's item types). (The
# screenshot carries no image here: an image is estimated at 765 tokens, most of the small model's window.)
PAIRS = {
    "function": (CALL, OUTPUT),
    "custom": (
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_x", "name": "grep", "input": "word"},
        {"type": "custom_tool_call_output", "call_id": "call_x", "output": "3 lines"},
    ),
    "computer": (
        {
            "type": "computer_call",
            "id": "cu_1",
            "call_id": "call_c",
            "action": {"type": "screenshot"},
            "pending_safety_checks": [],
            "status": "completed",
        },
        {
            "type": "computer_call_output",
            "call_id": "call_c",
            "output": {"type": "computer_screenshot"},
        },
    ),
    "shell": (
        {
            "type": "shell_call",
            "id": "sh_1",
            "call_id": "call_s",
            "action": {"commands": ["ls"]},
            "status": "completed",
        },
        {
            "type": "shell_call_output",
            "call_id": "call_s",
            "output": [{"stdout": "a.txt", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}],
        },
    ),
    "local shell": (
        {
            "type": "local_shell_call",
            "id": "lsh_1",
            "call_id": "call_l",
            "action": {"type": "exec", "command": ["ls"], "env": {}},
            "status": "completed",
        },
        {"type": "local_shell_call_output", "id": "lsh_out_1", "call_id": "call_l", "output": "a.txt"},
    ),
    "apply patch": (
        {
            "type": "apply_patch_call",
            "id": "ap_1",
            "call_id": "call_p",
            "operation": {"type": "delete_file", "path": "a.txt"},
            "status": "completed",
        },
        {"type": "apply_patch_call_output", "call_id": "call_p", "status": "completed"},
    ),
    "mcp approval": (
        {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "docs", "name": "search", "arguments": "{}"},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
    ),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", list(PAIRS))
async def test_an_answer_whose_call_was_cut_is_not_sent(
    kind: str, style: str, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    call, answer = PAIRS[kind]
    thread = await new_thread(alice, style)
    fake_upstream.reply_json(response_with_output([call]))
    await send(alice, thread, words(300, "first"))
    # The answer comes after a later user message: a cut at that message would leave it alone.
    fake_upstream.reply_json(text_response("second answer", msg_id="msg_2"))
    await send(alice, thread, [{"role": "user", "content": words(200, "second")}, answer])
    assert fake_upstream.requests[-1].body["input"][-2:] == [user(words(200, "second")), answer]

    fake_upstream.reply_json(text_response("third answer", msg_id="msg_3"))
    await send(alice, thread, words(300, "third"))
    assert fake_upstream.requests[-1].body["input"] == [
        user(words(200, "second")),
        assistant("second answer", "msg_2"),
        user(words(300, "third")),
    ]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kind", list(PAIRS))
async def test_every_kind_of_answer_to_a_cut_call_is_sent_with_its_call(
    kind: str, style: str, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    call, answer = PAIRS[kind]
    thread = await new_thread(alice, style)
    await send(alice, thread, words(250, "first"))
    fake_upstream.reply_json(response_with_output([REASONING, call]))
    await send(alice, thread, words(480, "second"))
    fake_upstream.reply_json(text_response("done", msg_id="msg_done"))
    await send(alice, thread, [answer, {"role": "user", "content": words(300, "next")}])
    assert fake_upstream.requests[-1].body["input"] == [
        REASONING,
        call,
        answer,
        user(words(300, "next")),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("style", STYLES)
async def test_a_long_agent_loop_keeps_its_task_and_the_latest_rounds_that_fit(
    alice: Tenant, fake_upstream: FakeOpenRouter, style: str, stream: bool
) -> None:
    """Rounds of calls and outputs with no user message between them. Cut only at user messages, such a loop once
    past the window sent nothing but the call the new input answers: the task and every earlier result went. The
    cut may fall at the start of a round, with the task sent before it."""
    thread = await new_thread(alice, style)

    def round_of(number: int) -> list[dict[str, Any]]:
        reasoning = {**REASONING, "id": f"rs_loop_{number}"}
        return [reasoning, {**CALL, "id": f"fc_loop_{number}", "call_id": f"call_loop_{number}"}]

    def answer(number: int) -> Reply:
        if stream:
            return Reply(kind="sse", events=output_stream_events(round_of(number)))
        return Reply(kind="json", body=response_with_output(round_of(number)))

    fake_upstream.enqueue(answer(0))
    await send(alice, thread, "start the job", stream=stream)
    for number in range(1, 16):
        fake_upstream.enqueue(answer(number))
        output = {**OUTPUT, "call_id": f"call_loop_{number - 1}", "output": words(40, f"result {number - 1}")}
        await send(alice, thread, [output], stream=stream)
    sent = fake_upstream.requests[-1].body["input"]
    assert sent[0] == user("start the job")
    results = [item["output"].split()[1] for item in sent if item.get("type") == "function_call_output"]
    assert len(results) > 2 and results == [str(n) for n in range(15 - len(results), 15)], results
    # Every output goes after its call; the rounds kept are whole.
    called: set[str] = set()
    for item in sent[1:]:
        if item.get("type") == "function_call":
            called.add(item["call_id"])
        elif item.get("type") == "function_call_output":
            assert item["call_id"] in called
    assert sent[1]["type"] == "reasoning"
