"""A thread's tool calls and outputs go upstream in pairs, as providers and OpenAI require:
- a stored tool output whose call is not in the conversation (its call deleted through the items API, or the
  output added alone there), or that answers a call answered already, stays stored and listed but is never sent,
  so that the conversation goes on (OpenAI answers "No tool call found for function call output" for it);
- a turn that leaves the thread's latest function calls, or its own input's, unanswered is refused as OpenAI
  refuses it ("No tool output found for function call …"), before anything is sent.
Both with a model whose window the catalog gives (the history counted) and one it does not (the history otherwise
sent as read)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant
from tests.fake_openrouter import SMALL_WINDOW_MODEL, FakeOpenRouter, response_with_output, text_response
from tests.test_truncated_tool_calls import CALL, OUTPUT, REASONING, TOOLS
from tests.turn_support import MODEL, list_all, new_conversation, user

QUESTION = {"role": "user", "content": "look it up"}
# A model the fake's catalog gives a window for, and one it does not.
MODELS = (SMALL_WINDOW_MODEL, MODEL)


async def send(tenant: Tenant, conversation_id: str, model: str, input_: Any) -> None:
    answer = await tenant.http.post(
        "/v1/responses", json={"model": model, "input": input_, "conversation": conversation_id, "tools": TOOLS}
    )
    assert answer.status_code == 200, answer.text


def sent_types(fake_upstream: FakeOpenRouter) -> list[str]:
    return [item.get("type", "message") for item in fake_upstream.requests[-1].body["input"]]


@pytest.mark.parametrize("model", MODELS)
async def test_an_output_whose_call_was_deleted_is_not_sent_and_stays_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([CALL]))
    await send(alice, conversation_id, model, "look it up")
    fake_upstream.reply_json(text_response("it is there", msg_id="msg_answer"))
    await send(alice, conversation_id, model, [OUTPUT])
    assert sent_types(fake_upstream) == ["message", "function_call", "function_call_output"]

    deleted = await alice.http.delete(f"/v1/conversations/{conversation_id}/items/fc_1")
    assert deleted.status_code == 200, deleted.text
    await send(alice, conversation_id, model, "and now?")
    assert fake_upstream.requests[-1].body["input"][0] == user("look it up")
    assert sent_types(fake_upstream) == ["message", "message", "message"]
    assert fake_upstream.requests[-1].body["input"][-1] == user("and now?")

    # Nothing stored was dropped: the output is still listed, and the next turn leaves it out again.
    stored = await list_all(alice.http, f"/v1/conversations/{conversation_id}/items", order="asc")
    assert [item["type"] for item in stored] == ["message", "function_call_output", "message", "message", "message"]
    await send(alice, conversation_id, model, "still fine?")
    assert "function_call_output" not in sent_types(fake_upstream)


@pytest.mark.parametrize("model", MODELS)
async def test_an_output_added_alone_through_the_items_api_is_not_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    conversation_id = await new_conversation(alice.http)
    added = await alice.http.post(
        f"/v1/conversations/{conversation_id}/items", json={"items": [{**OUTPUT, "call_id": "call_elsewhere"}]}
    )
    assert added.status_code == 200, added.text
    await send(alice, conversation_id, model, "hello")
    assert fake_upstream.requests[-1].body["input"] == [user("hello")]

    # Its call added after it does not make it sendable: a call must come before its output.
    late_call = {**CALL, "id": "fc_late", "call_id": "call_elsewhere"}
    added = await alice.http.post(f"/v1/conversations/{conversation_id}/items", json={"items": [late_call]})
    assert added.status_code == 200, added.text
    fake_upstream.reply_json(text_response("ok", msg_id="msg_ok"))
    await send(alice, conversation_id, model, [{**OUTPUT, "call_id": "call_elsewhere", "output": "now answered"}])
    sent = fake_upstream.requests[-1].body["input"]
    outputs = [item["output"] for item in sent if item.get("type") == "function_call_output"]
    assert outputs == ["now answered"]
    assert [item.get("type", "message") for item in sent][-2:] == ["function_call", "function_call_output"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_second_output_for_one_call_is_not_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    """Providers that check refuse it ("Duplicate function_call_output for call_id …"); the first one answers."""
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([CALL]))
    await send(alice, conversation_id, model, "look it up")
    await send(alice, conversation_id, model, [{**OUTPUT, "output": "first"}])
    added = await alice.http.post(
        f"/v1/conversations/{conversation_id}/items", json={"items": [{**OUTPUT, "output": "again"}]}
    )
    assert added.status_code == 200, added.text
    await send(alice, conversation_id, model, "thanks")
    sent = fake_upstream.requests[-1].body["input"]
    assert [item.get("output") for item in sent if item.get("type") == "function_call_output"] == ["first"]
    assert sent_types(fake_upstream) == ["message", "function_call", "function_call_output", "message", "message"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("style", ["conversation", "previous_response_id"])
async def test_a_turn_answering_a_call_a_second_time_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str, style: str
) -> None:
    """Two outputs for one call in a turn's input, or an output for a call the thread answered already, went
    upstream together on that turn, and on every later turn only the first: the model saw two results for one
    call, then one. Refused now, as providers that check the pairing refuse it, before anything is sent."""
    thread: dict[str, Any] = {"conversation": await new_conversation(alice.http)} if style == "conversation" else {}

    async def turn(input_: Any, **extra: Any) -> Any:
        answer = await alice.http.post("/v1/responses", json={"model": model, "input": input_, **thread, **extra})
        if style == "previous_response_id" and answer.status_code == 200:
            thread["previous_response_id"] = answer.json()["id"]
        return answer

    fake_upstream.reply_json(response_with_output([CALL]))
    assert (await turn("look it up")).status_code == 200
    calls = len(fake_upstream.requests)
    duplicate = {
        "message": "Duplicate function_call_output for call_id call_1: no call of that id is waiting for an output.",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }
    twice = [{**OUTPUT, "output": "first"}, {**OUTPUT, "output": "again"}]
    for extra in ({}, {"stream": True}):
        refused = await turn(twice, **extra)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == duplicate
    assert len(fake_upstream.requests) == calls

    fake_upstream.reply_json(text_response("found", msg_id="msg_found"))
    assert (await turn([{**OUTPUT, "output": "first"}])).status_code == 200
    calls = len(fake_upstream.requests)
    refused = await turn([{**OUTPUT, "output": "again"}])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == duplicate
    counted = await alice.http.post(
        "/v1/responses/input_tokens", json={"model": model, "input": [{**OUTPUT, "output": "again"}], **thread}
    )
    assert counted.status_code == 400, counted.text
    assert counted.json()["error"] == duplicate
    assert len(fake_upstream.requests) == calls
    if style == "conversation":
        stored = await list_all(alice.http, f"/v1/conversations/{thread['conversation']}/items", order="asc")
        assert [item["type"] for item in stored] == ["message", "function_call", "function_call_output", "message"]

    # A count refuses what the turn refuses, an output for a call the thread never made included.
    orphan = {**OUTPUT, "call_id": "call_nowhere"}
    counted = await alice.http.post("/v1/responses/input_tokens", json={"model": model, "input": [orphan], **thread})
    assert counted.status_code == 400, counted.text
    assert (
        counted.json()["error"]["message"] == "No tool call found for function call output with call_id call_nowhere."
    )
    assert (await turn([orphan])).json()["error"] == counted.json()["error"]

    # The thread goes on, and its one answer to the call is what every later turn sends.
    assert (await turn("thanks")).status_code == 200
    sent = fake_upstream.requests[-1].body["input"]
    assert [item.get("output") for item in sent if item.get("type") == "function_call_output"] == ["first"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_call_id_used_again_by_a_later_call_is_answered_again(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    """Agents that number their calls per turn reuse ids ("terminal:0"): each call pairs with the output after it."""
    conversation_id = await new_conversation(alice.http)
    for number in range(2):
        fake_upstream.reply_json(response_with_output([{**CALL, "id": f"fc_again_{number}"}]))
        await send(alice, conversation_id, model, f"look it up, take {number}")
        await send(alice, conversation_id, model, [{**OUTPUT, "output": f"found {number}"}])
    sent = fake_upstream.requests[-1].body["input"]
    assert [item.get("output") for item in sent if item.get("type") == "function_call_output"] == ["found 0", "found 1"]
    await send(alice, conversation_id, model, "thanks")
    sent = fake_upstream.requests[-1].body["input"]
    assert [item.get("output") for item in sent if item.get("type") == "function_call_output"] == ["found 0", "found 1"]


async def test_an_output_after_its_call_is_still_sent(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """The pairing reads only what the thread added: an output answering a call stored turns before is sent."""
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([CALL]))
    await send(alice, conversation_id, SMALL_WINDOW_MODEL, "look it up")
    await send(alice, conversation_id, SMALL_WINDOW_MODEL, [OUTPUT])
    await send(alice, conversation_id, SMALL_WINDOW_MODEL, "thanks")
    assert sent_types(fake_upstream) == ["message", "function_call", "function_call_output", "message", "message"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("style", ["conversation", "previous_response_id"])
async def test_a_turn_that_leaves_the_latest_call_unanswered_is_refused_as_openai_does(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str, style: str
) -> None:
    thread: dict[str, Any] = {"conversation": await new_conversation(alice.http)} if style == "conversation" else {}
    fake_upstream.reply_json(response_with_output([CALL]))
    first = await alice.http.post("/v1/responses", json={"model": model, "input": "look it up", **thread})
    assert first.status_code == 200, first.text
    if style == "previous_response_id":
        thread = {"previous_response_id": first.json()["id"]}
    calls = len(fake_upstream.requests)
    for path, extra in [("/v1/responses", {}), ("/v1/responses", {"stream": True}), ("/v1/responses/input_tokens", {})]:
        refused = await alice.http.post(path, json={"model": model, "input": "never mind", **thread, **extra})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == {
            "message": "No tool output found for function call call_1.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    assert len(fake_upstream.requests) == calls
    if style == "conversation":
        stored = await list_all(alice.http, f"/v1/conversations/{thread['conversation']}/items", order="asc")
        assert [item["type"] for item in stored] == ["message", "function_call"]

    # A count is refused only where the turn would be: not without input (the thread measured while its calls
    # run), nor with context_management, whose compaction first can take the call into its summary.
    compacting = {"input": "never mind", "context_management": [{"type": "compaction", "compact_threshold": 1000}]}
    for extra in ({}, compacting):
        measured = await alice.http.post("/v1/responses/input_tokens", json={"model": model, **thread, **extra})
        assert measured.status_code == 200, measured.text
        assert measured.json()["input_tokens"] > 0
    # Answered, the thread goes on.
    counted = await alice.http.post("/v1/responses/input_tokens", json={"model": model, "input": [OUTPUT], **thread})
    assert counted.status_code == 200, counted.text
    fake_upstream.reply_json(text_response("found", msg_id="msg_found"))
    answered = await alice.http.post("/v1/responses", json={"model": model, "input": [OUTPUT], **thread})
    assert answered.status_code == 200, answered.text
    assert sent_types(fake_upstream) == ["message", "function_call", "function_call_output"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_call_left_unanswered_before_a_later_user_message_does_not_stop_its_thread(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    """Such a call (added through the items API, or stored before turns were checked, or whose output was deleted)
    is not refused: only the calls since the last user message must be answered. Nor is it sent, as providers
    refuse a call without its output; it stays listed."""
    conversation_id = await new_conversation(alice.http)
    added = await alice.http.post(
        f"/v1/conversations/{conversation_id}/items",
        json={"items": [{**CALL, "id": "fc_old"}, {"type": "message", "role": "user", "content": "anyway"}]},
    )
    assert added.status_code == 200, added.text
    await send(alice, conversation_id, model, "go on")
    assert sent_types(fake_upstream) == ["message", "message"]
    stored = await list_all(alice.http, f"/v1/conversations/{conversation_id}/items", order="asc")
    assert [item["type"] for item in stored][:2] == ["function_call", "message"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_call_whose_output_was_deleted_is_not_sent_once_a_user_message_follows(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([REASONING, CALL]))
    await send(alice, conversation_id, model, "look it up")
    fake_upstream.reply_json(text_response("found it", msg_id="msg_found_it"))
    await send(alice, conversation_id, model, [OUTPUT])
    await send(alice, conversation_id, model, "thanks")
    stored = await list_all(alice.http, f"/v1/conversations/{conversation_id}/items", order="asc")
    output_id = next(item["id"] for item in stored if item["type"] == "function_call_output")
    deleted = await alice.http.delete(f"/v1/conversations/{conversation_id}/items/{output_id}")
    assert deleted.status_code == 200, deleted.text
    await send(alice, conversation_id, model, "and now?")
    assert sent_types(fake_upstream) == ["message", "message", "message", "message", "message"]


async def test_a_call_in_the_turns_own_input_must_be_answered_there(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Accepted, such a call was stored, and every later turn of the thread refused for it."""
    conversation_id = await new_conversation(alice.http)
    for model in MODELS:
        body = {"model": model, "input": [QUESTION, CALL], "conversation": conversation_id, "tools": TOOLS}
        for path in ("/v1/responses", "/v1/responses/input_tokens"):
            refused = await alice.http.post(path, json=body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["message"] == "No tool output found for function call call_1."
    assert fake_upstream.requests == []
    await send(alice, conversation_id, MODEL, [QUESTION, CALL, OUTPUT])
    assert sent_types(fake_upstream) == ["message", "function_call", "function_call_output"]
    await send(alice, conversation_id, MODEL, "next")
    assert sent_types(fake_upstream)[-2:] == ["message", "message"]


async def test_a_call_cut_off_before_its_end_need_not_be_answered(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    """An answer cut at max_output_tokens in the middle of a call's arguments: there is nothing to run, and the
    client retries with a user message."""
    conversation_id = await new_conversation(alice.http)
    cut = {**CALL, "arguments": '{"q', "status": "incomplete"}
    fake_upstream.reply_json(
        response_with_output([cut], status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    )
    await send(alice, conversation_id, SMALL_WINDOW_MODEL, "look it up")
    await send(alice, conversation_id, SMALL_WINDOW_MODEL, "try again with more room")
    # Nor is it sent: a provider refuses it without an output (and its arguments are cut).
    assert sent_types(fake_upstream) == ["message", "message"]


@pytest.mark.parametrize("model", MODELS)
async def test_an_mcp_approval_response_whose_request_was_deleted_is_not_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    request = {
        "type": "mcp_approval_request",
        "id": "mcpr_1",
        "server_label": "docs",
        "name": "search",
        "arguments": "{}",
    }
    approval = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([request]))
    await send(alice, conversation_id, model, "look it up")
    await send(alice, conversation_id, model, [approval])
    assert sent_types(fake_upstream) == ["message", "mcp_approval_request", "mcp_approval_response"]

    deleted = await alice.http.delete(f"/v1/conversations/{conversation_id}/items/mcpr_1")
    assert deleted.status_code == 200, deleted.text
    await send(alice, conversation_id, model, "and now?")
    # A provider refuses an approval response whose request it is not given, on every later turn.
    assert "mcp_approval_response" not in sent_types(fake_upstream)
    stored = await list_all(alice.http, f"/v1/conversations/{conversation_id}/items", order="asc")
    assert "mcp_approval_response" in [item["type"] for item in stored]


@pytest.mark.parametrize("model", MODELS)
async def test_an_mcp_approval_response_added_alone_is_not_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    conversation_id = await new_conversation(alice.http)
    approval = {"type": "mcp_approval_response", "approval_request_id": "mcpr_gone", "approve": True}
    added = await alice.http.post(f"/v1/conversations/{conversation_id}/items", json={"items": [approval]})
    assert added.status_code == 200, added.text
    await send(alice, conversation_id, model, "hello")
    assert sent_types(fake_upstream) == ["message"]


@pytest.mark.parametrize("model", MODELS)
async def test_a_local_shell_output_naming_its_call_by_id_as_openais_sdk_does_is_sent_with_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    call = {
        "type": "local_shell_call",
        "id": "lsh_1",
        "call_id": "call_lsh_1",
        "status": "completed",
        "action": {"type": "exec", "command": ["ls"], "env": {}},
    }
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(response_with_output([call]))
    await send(alice, conversation_id, model, "list the files")
    # The SDK's LocalShellCallOutput: `id` is "the unique ID of the local shell tool call generated by the model".
    output = {"type": "local_shell_call_output", "id": "call_lsh_1", "output": '{"stdout": "a.txt"}'}
    fake_upstream.reply_json(text_response("one file", msg_id="msg_files"))
    await send(alice, conversation_id, model, [output])
    assert sent_types(fake_upstream) == ["message", "local_shell_call", "local_shell_call_output"]
    await send(alice, conversation_id, model, "thanks")
    assert sent_types(fake_upstream) == ["message", "local_shell_call", "local_shell_call_output", "message", "message"]


@pytest.mark.parametrize("model", MODELS)
async def test_every_kind_of_tool_output_without_its_call_or_given_twice_is_refused_before_it_is_sent(
    alice: Tenant, fake_upstream: FakeOpenRouter, model: str
) -> None:
    """Only function and custom tool outputs were checked: a computer, shell, local shell or patch output whose
    call was nowhere, or a second one for an answered call, went upstream, which a provider refuses."""
    outputs = {
        "computer_call_output": {"output": {"type": "computer_screenshot", "image_url": "https://x/s.png"}},
        "shell_call_output": {"output": []},
        "local_shell_call_output": {"output": "{}"},
        "apply_patch_call_output": {"status": "completed"},
    }
    conversation_id = await new_conversation(alice.http)
    for kind, fields in outputs.items():
        orphan = {"type": kind, "call_id": f"call_{kind}", **fields}
        answer = await alice.http.post(
            "/v1/responses", json={"model": model, "input": [orphan], "conversation": conversation_id}
        )
        assert answer.status_code == 400, answer.text
        named = kind.replace("_", " ")
        assert answer.json()["error"]["message"] == f"No tool call found for {named} with call_id call_{kind}."
    assert fake_upstream.requests == []

    call = {
        "type": "shell_call",
        "id": "sh_1",
        "call_id": "call_sh_1",
        "status": "completed",
        "action": {"commands": ["ls"]},
    }
    fake_upstream.reply_json(response_with_output([call]))
    await send(alice, conversation_id, model, "list them")
    shell_output = {"type": "shell_call_output", "call_id": "call_sh_1", "output": []}
    await send(alice, conversation_id, model, [shell_output])
    again = await alice.http.post(
        "/v1/responses", json={"model": model, "input": [shell_output], "conversation": conversation_id}
    )
    assert again.status_code == 400, again.text
    assert again.json()["error"]["message"] == (
        "Duplicate shell_call_output for call_id call_sh_1: no call of that id is waiting for an output."
    )
    assert len(fake_upstream.requests) == 2
