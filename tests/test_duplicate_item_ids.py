"""An item id appears at most once in a conversation, and once in the history a turn sends upstream.

Clients page a conversation's items with `after=<last id>` (the SDK's auto-pagination does), so an id stored twice
made those pages repeat items forever (ascending) or skip them (descending). OpenAI refuses an input holding an id
the context already holds with a 400 "Duplicate item found with id …"; so does the service, before anything is
claimed, stored or sent upstream."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.turn_support import MODEL, assistant, conversation_items, new_conversation, rows, turn, user


def _duplicate(answer: Any, item_id: str, param: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {
        "message": f"Duplicate item found with id {item_id}. Remove duplicate items from your input and try again.",
        "type": "invalid_request_error",
        "param": param,
        "code": None,
    }


async def _stored(db: AsyncEngine) -> list[dict[str, Any]]:
    return await rows(db, "SELECT pk, id, response_id, conversation_id, position FROM item ORDER BY pk")


async def test_a_conversation_turn_resending_an_item_of_the_conversation_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(text_response("First answer", msg_id="msg_first"))
    conv = await new_conversation(alice.http)
    first = await turn(alice.http, "first", conversation=conv)
    before, responses = await _stored(db), await rows(db, "SELECT id FROM response")

    # The previous output sent back as input, as a client moving from hand-built history to `conversation` does.
    resent = [first["output"][0], {"role": "user", "content": "second"}]
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": resent, "conversation": conv})
    _duplicate(answer, "msg_first", "input")
    # The same through an item reference to the conversation's own item, streamed or in the background.
    reference = [{"type": "item_reference", "id": "msg_first"}]
    for extra in ({}, {"stream": True}, {"background": True}):
        answer = await alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": reference, "conversation": conv, **extra}
        )
        _duplicate(answer, "msg_first", "input")

    assert len(fake_upstream.requests) == 1
    assert await _stored(db) == before
    assert await rows(db, "SELECT id FROM response") == responses
    # Nothing was claimed: the conversation takes its next turn, and lists each item once, page by page.
    await turn(alice.http, "second", conversation=conv)
    assert fake_upstream.inputs[1] == [user("first"), assistant("First answer", "msg_first"), user("second")]
    for order in ("asc", "desc"):
        seen: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1, "order": order, **({"after": after} if after else {})}
            page = (await alice.http.get(f"/v1/conversations/{conv}/items", params=params)).json()
            seen += [item["id"] for item in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert len(seen) == len(set(seen)) == 4, (order, seen)


async def test_the_same_id_twice_in_one_input_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    twice = [
        {"type": "message", "id": "msg_client", "role": "assistant", "content": "a"},
        {"type": "message", "id": "msg_client", "role": "assistant", "content": "b"},
    ]
    _duplicate(await alice.http.post("/v1/responses", json={"model": MODEL, "input": twice}), "msg_client", "input")
    _duplicate(
        await alice.http.post("/v1/responses", json={"model": MODEL, "input": twice, "store": False}),
        "msg_client",
        "input",
    )
    _duplicate(await alice.http.post("/v1/conversations", json={"items": twice}), "msg_client", "items")
    assert fake_upstream.requests == []
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await _stored(db) == []
    # Ids the client leaves out are minted, and never collide.
    fresh = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert (await alice.http.post("/v1/responses", json={"model": MODEL, "input": fresh})).status_code == 200


async def test_conversation_items_create_refuses_an_id_the_conversation_holds(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    held = {"type": "message", "id": "msg_held", "role": "assistant", "content": "kept"}
    conv = await new_conversation(alice.http, items=[held])
    before = await _stored(db)
    again = [{"role": "user", "content": "new"}, {**held, "content": "other"}]
    _duplicate(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": again}), "msg_held", "items")
    reference = [{"type": "item_reference", "id": "msg_held"}]
    _duplicate(await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": reference}), "msg_held", "items")
    assert await _stored(db) == before

    # Another conversation may hold the same id (a copy of the item, or the client's own id scheme).
    other = await new_conversation(alice.http, items=[held])
    added = await alice.http.post(
        f"/v1/conversations/{other}/items", json={"items": [{"role": "user", "content": "x"}]}
    )
    assert added.status_code == 200, added.text
    assert [row["id"] for row in await conversation_items(db, other)][:1] == ["msg_held"]


async def test_another_tenants_conversation_is_not_found_rather_than_probed_for_ids(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await new_conversation(
        alice.http, items=[{"type": "message", "id": "msg_secret", "role": "user", "content": "x"}]
    )
    probe = [{"type": "message", "id": "msg_secret", "role": "user", "content": "y"}]
    answer = await bob.http.post("/v1/responses", json={"model": MODEL, "input": probe, "conversation": conv})
    assert answer.status_code == 404, answer.text
    answer = await bob.http.post(f"/v1/conversations/{conv}/items", json={"items": probe})
    assert answer.status_code == 404, answer.text
    assert fake_upstream.requests == []


async def test_a_chain_turn_resending_an_item_of_its_history_is_refused(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    fake_upstream.reply_json(text_response("Root answer", msg_id="msg_root"))
    root = await turn(alice.http, "root")
    fake_upstream.reply_json(text_response("Child answer", msg_id="msg_child"))
    child = await turn(alice.http, "child", previous_response_id=root["id"])
    before, chains = await _stored(db), await rows(db, "SELECT * FROM response_chain")

    for resent, held in ((root["output"][0], "msg_root"), (child["output"][0], "msg_child")):
        for extra in ({}, {"store": False}, {"stream": True}, {"background": True}):
            body = {"model": MODEL, "input": [resent, user("again")], "previous_response_id": child["id"], **extra}
            _duplicate(await alice.http.post("/v1/responses", json=body), held, "input")

    assert len(fake_upstream.requests) == 2
    assert await _stored(db) == before
    assert await rows(db, "SELECT * FROM response_chain") == chains  # no turn listed on the chain's row
    # A sibling branch does not hold the child's items: sending one there is no duplicate.
    fake_upstream.reply_json(text_response("Sibling answer", msg_id="msg_sibling"))
    sibling = await turn(alice.http, [child["output"][0], user("sibling")], previous_response_id=root["id"])
    root_items = [user("root"), assistant("Root answer", "msg_root")]
    assert fake_upstream.inputs[2] == [*root_items, child["output"][0], user("sibling")]
    # And the chain goes on.
    await turn(alice.http, "next", previous_response_id=sibling["id"])
    assert (await rows(db, "SELECT last_status FROM response_chain"))[0]["last_status"] == "completed"
