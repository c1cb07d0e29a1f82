"""Long conversations: a worker keeps their history between turns and reads only the items added since
(service/responses/history_cache.py). What goes upstream must stay exactly the stored conversation, whatever
changed in between: items deleted or added through the API, turns run by another worker."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.responses.history_cache import MIN_BYTES, CachedHistory, HistoryCache
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.turn_support import conversation_items, turn, user

_ITEM_TEXT_CHARS = 5000


def _long_message(n: int) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": f"{n:04d} " + "x" * _ITEM_TEXT_CHARS}


async def _long_conversation(client: httpx.AsyncClient, item_count: int = 20) -> str:
    """A conversation whose history is past the cache's minimum size."""
    assert item_count * _ITEM_TEXT_CHARS > MIN_BYTES
    created = await client.post("/v1/conversations", json={"items": [_long_message(n) for n in range(item_count)]})
    assert created.status_code == 200, created.text
    conversation_id: str = created.json()["id"]
    return conversation_id


async def _stored_history(db: AsyncEngine, conversation_id: str) -> list[Any]:
    return [json.loads(row["body"]) for row in await conversation_items(db, conversation_id)]


async def _change_first_item_behind_the_service(db: AsyncEngine, conversation_id: str, new_text: str) -> None:
    """What no API can do (stored item texts never change): shows which items a turn read again."""
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE item SET body = :body WHERE conversation_id = :c AND position = 0"),
            {"body": json.dumps(user(new_text)), "c": conversation_id},
        )


async def _turn_sends_stored_history(
    client: httpx.AsyncClient, fake: FakeOpenRouter, db: AsyncEngine, conversation_id: str, question: str
) -> None:
    """One turn, and what went upstream is every stored item in order, then the new input."""
    expected = [*await _stored_history(db, conversation_id), user(question)]
    sent_before = len(fake.requests)
    await turn(client, question, conversation=conversation_id)
    assert len(fake.requests) == sent_before + 1
    assert fake.inputs[-1] == expected


async def test_a_long_conversation_reads_only_the_items_added_since_its_last_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await _long_conversation(alice.http)
    await _turn_sends_stored_history(alice.http, fake_upstream, db, conv, "Q1")
    before_tampering = await _stored_history(db, conv)
    # Stored item texts never change, so the worker does not read them again. Changing one behind the service's
    # back shows which items the next turn read: only the two the first turn added, and the new input.
    await _change_first_item_behind_the_service(db, conv, "changed behind the service's back")
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[-1] == [*before_tampering, user("Q2")]


async def test_a_short_conversation_is_read_in_full_every_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    created = await alice.http.post("/v1/conversations", json={"items": [{"role": "user", "content": "hi"}]})
    conv = created.json()["id"]
    await turn(alice.http, "Q1", conversation=conv)
    await _change_first_item_behind_the_service(db, conv, "changed")
    await turn(alice.http, "Q2", conversation=conv)
    assert fake_upstream.inputs[-1][0] == user("changed")


async def test_items_deleted_or_added_between_turns_are_seen_by_the_next_turn(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await _long_conversation(alice.http)
    await _turn_sends_stored_history(alice.http, fake_upstream, db, conv, "Q1")
    items = await conversation_items(db, conv)

    deleted = await alice.http.delete(f"/v1/conversations/{conv}/items/{items[3]['id']}")
    assert deleted.status_code == 200, deleted.text
    await _turn_sends_stored_history(alice.http, fake_upstream, db, conv, "Q2")
    assert all(item["id"] != items[3]["id"] for item in fake_upstream.inputs[-1] if "id" in item)

    # A deletion and an addition: the count is back where it was, the end has moved. (Q2 read the history
    # in full after the deletion and kept none of it; this turn keeps it again.)
    await _turn_sends_stored_history(alice.http, fake_upstream, db, conv, "Q2b")
    deleted = await alice.http.delete(f"/v1/conversations/{conv}/items/{items[5]['id']}")
    assert deleted.status_code == 200, deleted.text
    added = await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": [_long_message(99)]})
    assert added.status_code == 200, added.text
    await _turn_sends_stored_history(alice.http, fake_upstream, db, conv, "Q3")
    sent = fake_upstream.inputs[-1]
    assert len(sent) == len(items) - 2 + 1 + 4 + 1  # two deleted, one added, the turns Q2 and Q2b, Q3
    assert sent[-2]["content"][0]["text"].startswith("0099 ")


async def test_two_workers_taking_turns_on_one_conversation_each_send_the_whole_history(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    start_server: Callable[..., LiveServer],
) -> None:
    other_worker = start_server()
    async with httpx.AsyncClient(
        base_url=other_worker.url, headers={"Authorization": f"Bearer {alice.key}"}, timeout=30
    ) as other:
        conv = await _long_conversation(alice.http)
        workers = [alice.http, other, other, alice.http, alice.http, other]
        for n, client in enumerate(workers):
            if n == 3:  # an early item goes while the first worker's history is two turns behind
                items = await conversation_items(db, conv)
                deleted = await other.delete(f"/v1/conversations/{conv}/items/{items[1]['id']}")
                assert deleted.status_code == 200, deleted.text
            await _turn_sends_stored_history(client, fake_upstream, db, conv, f"Q{n}")
    stored = await _stored_history(db, conv)
    assert len(stored) == 20 - 1 + 2 * len(workers)
    assert fake_upstream.inputs[-1] == stored[:-1]


def test_conversations_taken_in_turn_beyond_the_budget_still_hit_the_cache() -> None:
    """Least-recently-used eviction drops each of a cycle of conversations just before its next turn, once the cycle
    needs more than the budget: no turn would ever read from the cache. Evicting at random keeps a share."""
    history = CachedHistory(next_position=100, item_count=100, text="x" * MIN_BYTES)
    cache = HistoryCache(max_bytes=10 * history.size())
    random.seed(1234)
    conversations = [f"conv_{n}" for n in range(15)]
    hits = 0
    for _ in range(40):
        for conversation_id in conversations:
            hits += cache.get(conversation_id) is not None
            cache.put(conversation_id, history)
            assert len(cache) <= 10
    # Each turn finds its conversation with probability about 10 / 15 at best; LRU would give 0 of 600.
    assert hits > 0.4 * 40 * len(conversations)


def test_an_entry_is_replaced_and_discarded_and_short_histories_are_not_kept() -> None:
    long = CachedHistory(next_position=100, item_count=100, text="x" * MIN_BYTES)
    newer = CachedHistory(next_position=102, item_count=102, text="y" * MIN_BYTES)
    cache = HistoryCache(max_bytes=3 * long.size())
    cache.put("conv_a", long)
    cache.put("conv_a", newer)
    assert cache.get("conv_a") is newer and len(cache) == 1
    cache.put("conv_b", CachedHistory(next_position=2, item_count=2, text="short"))
    assert cache.get("conv_b") is None
    cache.discard("conv_a")
    assert cache.get("conv_a") is None and len(cache) == 0
    cache.put("conv_c", long)  # the budget freed by the discard is usable again
    cache.put("conv_d", long)
    cache.put("conv_e", long)
    assert len(cache) == 3
