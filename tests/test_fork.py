"""Fork a conversation at an item: a new conversation with copies of the items up to it; both continue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.turn_support import MODEL, assistant, conversation_items, list_all, new_conversation, rows, turn, user


async def _three_turns(tenant: Tenant, fake_upstream: FakeOpenRouter) -> tuple[str, list[dict[str, object]]]:
    conv = await new_conversation(tenant.http, metadata={"source": "yes"})
    for n in range(1, 4):
        fake_upstream.reply_json(text_response(f"answer {n}", msg_id=f"msg_src_{n}"))
        await turn(tenant.http, f"question {n}", conversation=conv)
    return conv, await list_all(tenant.http, f"/v1/conversations/{conv}/items", order="asc")


async def test_fork_copies_items_through_the_given_one_and_both_continue(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv, source_items = await _three_turns(alice, fake_upstream)
    at = source_items[3]  # the second answer
    answer = await alice.http.post(f"/v1/conversations/{conv}/fork", json={"item_id": at["id"]})
    assert answer.status_code == 200, answer.text
    fork = answer.json()
    assert fork["object"] == "conversation"
    assert fork["id"] != conv
    assert fork["metadata"] == {"source": "yes"}

    forked = await list_all(alice.http, f"/v1/conversations/{fork['id']}/items", order="asc")
    assert len(forked) == 4
    for copy, original in zip(forked, source_items[:4], strict=True):
        assert copy["id"] != original["id"]
        assert {**copy, "id": original["id"]} == original
    # The source is untouched.
    assert await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc") == source_items

    # Both continue independently, the fork from its copy of the history (through the SDK).
    fake_upstream.reply_json(text_response("fork answer", msg_id="msg_fork_1"))
    client = alice.openai()
    reply = await client.responses.create(model=MODEL, input="fork question", conversation=fork["id"])
    assert reply.output_text == "fork answer"
    sent = fake_upstream.inputs[-1]
    assert sent[0] == user("question 1")
    assert sent[1]["id"] == forked[1]["id"]
    assert {**sent[1], "id": "msg_src_1"} == assistant("answer 1", "msg_src_1")
    assert sent[2] == user("question 2")
    assert {**sent[3], "id": "msg_src_2"} == assistant("answer 2", "msg_src_2")
    assert sent[4:] == [user("fork question")]

    fake_upstream.reply_json(text_response("source answer", msg_id="msg_src_4"))
    await turn(alice.http, "source question", conversation=conv)
    assert fake_upstream.inputs[-1] == [
        user("question 1"),
        assistant("answer 1", "msg_src_1"),
        user("question 2"),
        assistant("answer 2", "msg_src_2"),
        user("question 3"),
        assistant("answer 3", "msg_src_3"),
        user("source question"),
    ]
    assert len(await conversation_items(db, conv)) == 8
    assert len(await conversation_items(db, fork["id"])) == 6
    (counts,) = await rows(db, "SELECT item_count, next_position FROM conversation WHERE id = :c", c=fork["id"])
    assert counts == {"item_count": 6, "next_position": 6}


async def test_fork_takes_new_metadata_and_refuses_unknown_items(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv, items = await _three_turns(alice, fake_upstream)
    first = await alice.http.post(
        f"/v1/conversations/{conv}/fork", json={"item_id": items[0]["id"], "metadata": {"b": "1"}}
    )
    assert first.status_code == 200, first.text
    assert first.json()["metadata"] == {"b": "1"}
    assert len(await conversation_items(db, first.json()["id"])) == 1

    other = await new_conversation(alice.http, items=[{"role": "user", "content": "elsewhere"}])
    (elsewhere,) = await list_all(alice.http, f"/v1/conversations/{other}/items")
    fork = f"/v1/conversations/{conv}/fork"
    kept = items[0]["id"]
    refused = [
        (await alice.http.post(fork, json={"item_id": elsewhere["id"]}), 404, "item_id", None),
        (await alice.http.post(fork, json={"item_id": "msg_nope"}), 404, "item_id", None),
        (await alice.http.post(fork, json={}), 400, "item_id", "missing_required_parameter"),
        (await alice.http.post(fork, json={"item_id": 5}), 400, "item_id", "invalid_type"),
        (await alice.http.post(fork, json={"item_id": kept, "metadata": 3}), 400, "metadata", None),
        # A misspelt `metadata` used to be dropped, and the fork took the source's metadata without a word.
        (
            await alice.http.post(fork, json={"item_id": kept, "metdata": {"b": "2"}}),
            400,
            "metdata",
            "unknown_parameter",
        ),
        (await bob.http.post(fork, json={"item_id": kept}), 404, None, None),
    ]
    for answer, status, param, code in refused:
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["param"] == param
        if code is not None:
            assert answer.json()["error"]["code"] == code
    assert len(await rows(db, "SELECT id FROM conversation")) == 3


async def test_a_fork_that_would_hold_more_than_the_conversation_caps_is_refused_and_copies_nothing(
    alice: Tenant,
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    db: AsyncEngine,
) -> None:
    """A fork used to copy any number of items, making a conversation beyond the caps that no append or turn
    could then add to."""
    items = [{"role": "user", "content": f"item {n} " + "x" * 1000} for n in range(5)]
    source = await new_conversation(alice.http, items=items)
    listed = await list_all(alice.http, f"/v1/conversations/{source}/items", order="asc")
    caps_and_what = (
        ({"max_conversation_items": 3}, 3, "would hold 4 items; at most 3 (MAX_CONVERSATION_ITEMS)"),
        ({"max_conversation_bytes": 2500}, 2, "bytes of items; at most 2500 (MAX_CONVERSATION_BYTES)"),
    )
    for caps, within, what in caps_and_what:
        capped = await make_tenant("alice", live=start_server(**caps))
        fork = f"/v1/conversations/{source}/fork"
        refused = await capped.http.post(fork, json={"item_id": listed[within]["id"]})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("conversation_too_large", "item_id")
        assert what in error["message"], error
        assert await rows(db, "SELECT id FROM conversation") == [{"id": source}]
        assert len(await rows(db, "SELECT id FROM item")) == 5

        kept = await capped.http.post(fork, json={"item_id": listed[within - 1]["id"]})
        assert kept.status_code == 200, kept.text
        assert len(await list_all(capped.http, f"/v1/conversations/{kept.json()['id']}/items")) == within
        assert (await capped.http.delete(f"/v1/conversations/{kept.json()['id']}")).status_code == 200


async def test_a_retried_fork_or_import_with_the_same_idempotency_key_creates_one_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv, items = await _three_turns(alice, fake_upstream)
    key = {"Idempotency-Key": "fork-once"}
    first = await alice.http.post(f"/v1/conversations/{conv}/fork", json={"item_id": items[1]["id"]}, headers=key)
    again = await alice.http.post(f"/v1/conversations/{conv}/fork", json={"item_id": items[1]["id"]}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    exported = (await alice.http.get(f"/v1/conversations/{conv}/export")).content
    headers = {"Idempotency-Key": "import-once", "Content-Type": "application/jsonl"}
    imported = await alice.http.post("/v1/conversations/import", content=exported, headers=headers)
    replayed = await alice.http.post("/v1/conversations/import", content=exported, headers=headers)
    assert imported.status_code == replayed.status_code == 200
    assert replayed.json()["id"] == imported.json()["id"]
    assert len(await rows(db, "SELECT id FROM conversation")) == 3


async def test_a_fork_racing_a_delete_copies_everything_or_answers_404_never_a_part(
    alice: Tenant, db: AsyncEngine
) -> None:
    """Delete detaches and deletes the source's items in its own transaction; a fork that read the source before
    the delete committed used to copy what was left: often nothing."""
    for round_ in range(20):
        items = [{"role": "user", "content": f"round {round_} item {n}"} for n in range(20)]
        created = await alice.http.post("/v1/conversations", json={"items": items})
        source = created.json()["id"]
        newest = await alice.http.get(f"/v1/conversations/{source}/items", params={"limit": 1, "order": "desc"})
        last = newest.json()["data"][0]["id"]
        fork, delete = await asyncio.gather(
            alice.http.post(f"/v1/conversations/{source}/fork", json={"item_id": last}),
            alice.http.delete(f"/v1/conversations/{source}"),
        )
        assert delete.status_code == 200, delete.text
        assert fork.status_code in (200, 404), fork.text
        if fork.status_code == 200:
            copied = await list_all(alice.http, f"/v1/conversations/{fork.json()['id']}/items", order="asc")
            assert [i["content"][0]["text"] for i in copied] == [f"round {round_} item {n}" for n in range(20)]


async def test_a_fork_renews_ids_that_json_escapes(alice: Tenant, db: AsyncEngine) -> None:
    """An id holding a quote or a backslash is escaped in the item's JSON text: the fork must find it there, so
    that the copy is shown, read and deleted by one new id."""
    odd = ['m"q', "back\\slash", "tab\tid"]
    items = [{"type": "message", "id": odd_id, "role": "user", "content": odd_id} for odd_id in odd]
    source = await new_conversation(alice.http, items=[*items, {"type": "message", "role": "user", "content": "end"}])
    last = (await alice.http.get(f"/v1/conversations/{source}/items", params={"order": "desc", "limit": 1})).json()
    forked = await alice.http.post(f"/v1/conversations/{source}/fork", json={"item_id": last["data"][0]["id"]})
    assert forked.status_code == 200, forked.text
    fork = forked.json()["id"]
    shown = (await alice.http.get(f"/v1/conversations/{fork}/items", params={"order": "asc"})).json()["data"]
    assert [item["content"][0]["text"] for item in shown[:3]] == odd
    stored = await rows(db, "SELECT id, body FROM item WHERE conversation_id = :c ORDER BY position", c=fork)
    for item, row in zip(shown, stored, strict=True):
        assert item["id"] == row["id"] and item["id"] not in odd
        assert json.loads(row["body"]).get("id", row["id"]) == row["id"]
    for item in shown[:3]:
        path = f"/v1/conversations/{fork}/items/{quote(item['id'], safe='')}"
        assert (await alice.http.get(path)).status_code == 200
        assert (await alice.http.delete(path)).status_code == 200
