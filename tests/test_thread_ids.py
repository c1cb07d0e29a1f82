"""Every stored response and item names its thread: the conversation's id, or the id of its chain's first
response; a chain that continues a conversation's response is in the conversation's thread. A chain's totals
(response_chain) follow its turns, streamed, background and plain alike."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.turn_support import new_conversation, rows, turn


async def thread_of_rows(db: AsyncEngine) -> tuple[dict[str, str], dict[str, str]]:
    """(response id -> thread_id, item id -> thread_id) of everything stored."""
    responses = await rows(db, "SELECT id, thread_id FROM response")
    items = await rows(db, "SELECT id, thread_id FROM item")
    return {r["id"]: r["thread_id"] for r in responses}, {i["id"]: i["thread_id"] for i in items}


async def test_chain_with_a_branch_is_one_thread_named_by_its_first_response(alice: Tenant, db: AsyncEngine) -> None:
    first = await turn(alice.http, "alpha one")
    second = await turn(alice.http, "alpha two", previous_response_id=first["id"])
    third = await turn(alice.http, "alpha three", previous_response_id=second["id"], stream=False)
    branch = await turn(alice.http, "alpha branch", previous_response_id=first["id"])
    other = await turn(alice.http, "another chain")

    responses, items = await thread_of_rows(db)
    chain = {first["id"], second["id"], third["id"], branch["id"]}
    assert responses == {**dict.fromkeys(chain, first["id"]), other["id"]: other["id"]}
    item_rows = await rows(db, "SELECT response_id, thread_id FROM item")
    assert len(item_rows) == 10  # one input and one output per turn
    for row in item_rows:
        assert row["thread_id"] == responses[row["response_id"]]
    assert set(items.values()) == {first["id"], other["id"]}


async def test_conversation_turns_and_chains_continuing_them_are_in_the_conversation_thread(
    alice: Tenant, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "added directly"}])
    in_conversation = await turn(alice.http, "inside", conversation=conversation)
    streamed = await alice.http.post(
        "/v1/responses", json={"model": "m/x", "input": "streamed", "conversation": conversation, "stream": True}
    )
    assert streamed.status_code == 200
    continued = await turn(alice.http, "continues it", previous_response_id=in_conversation["id"])
    added = await alice.http.post(
        f"/v1/conversations/{conversation}/items", json={"items": [{"role": "user", "content": "later"}]}
    )
    assert added.status_code == 200, added.text

    responses, items = await thread_of_rows(db)
    assert len(responses) == 3 and set(responses.values()) == {conversation}
    assert len(items) == 8 and set(items.values()) == {conversation}
    assert continued["previous_response_id"] == in_conversation["id"]
    # Threads that are conversations keep their totals on the conversation, not as chains.
    assert await rows(db, "SELECT id FROM response_chain") == []


async def test_chain_totals_follow_every_kind_of_turn(alice: Tenant, db: AsyncEngine) -> None:
    root = await turn(alice.http, "  Plan   the\ttrip  ", metadata={"project": "p1"})
    streamed = await alice.http.post(
        "/v1/responses",
        json={"model": "m/x", "input": "go on", "previous_response_id": root["id"], "stream": True},
    )
    assert streamed.status_code == 200
    plain = await turn(alice.http, "plain", previous_response_id=root["id"])  # stored whole by its finish
    background = await turn(alice.http, "in the background", previous_response_id=plain["id"], background=True)
    for _ in range(200):
        status = (await rows(db, "SELECT status FROM response WHERE id = :id", id=background["id"]))[0]["status"]
        if status == "completed":
            break
        await asyncio.sleep(0.02)
    [chain] = await rows(db, "SELECT * FROM response_chain")
    assert chain["id"] == root["id"]
    assert chain["metadata"] == {"project": "p1"}
    assert chain["title"] == "Plan the trip"
    assert chain["response_count"] == 4
    assert chain["item_count"] == 8
    assert (chain["input_tokens"], chain["output_tokens"]) == (40, 20)
    assert chain["cost"] == Decimal("0.00168")
    assert chain["last_model"] == "openai/gpt-4o-mini"  # the model that served it, as for conversations
    assert chain["last_status"] == "completed"
    [newest] = await rows(db, "SELECT max(completed_at) AS at FROM response")
    assert chain["updated_at"] >= newest["at"] > chain["created_at"]
