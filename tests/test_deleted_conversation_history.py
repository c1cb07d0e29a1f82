"""A deleted conversation's responses stay, and so does the history they replay.

OpenAI documents `DELETE /v1/conversations/{id}` as "Items in the conversation will not be deleted": its responses
can still be continued with `previous_response_id`, and the model still sees what preceded them in the
conversation. The conversation is gone for every API, and what no response needs any more goes: the items added
after its last response at once, the rest with its last response (a tenant's delete or the retention purge)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.console_support import sign_in
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.reliability_support import eventually, requests_waiting_on_a_lock
from tests.turn_support import MODEL, assistant, new_conversation, rows, turn, user


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


def _answer(fake: FakeOpenRouter, label: str) -> dict[str, Any]:
    fake.reply_json(text_response(label, msg_id=f"msg_{label}"))
    return assistant(label, f"msg_{label}")


async def _conversation_with_two_turns(
    tenant: Tenant, fake: FakeOpenRouter
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A conversation: a seed message, two turns. Returns its id, its responses and its items as replayed."""
    conversation = await new_conversation(tenant.http, items=[{"role": "user", "content": "My name is Ada"}])
    a1 = _answer(fake, "hello")
    first = await turn(tenant.http, "hi", conversation=conversation)
    a2 = _answer(fake, "fine")
    second = await turn(tenant.http, "how are you?", conversation=conversation)
    history = [user("My name is Ada"), user("hi"), a1, user("how are you?"), a2]
    return conversation, [first, second], history


async def _delete(http: httpx.AsyncClient, path: str) -> None:
    answer = await http.delete(path)
    assert answer.status_code == 200, answer.text


async def test_a_deleted_conversations_responses_continue_with_what_preceded_them(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    start_server: Callable[..., LiveServer],
    admin: httpx.AsyncClient,
    db: AsyncEngine,
) -> None:
    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    added = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "added after the last turn"}]},
    )
    assert added.status_code == 200, added.text
    added_id = added.json()["data"][0]["id"]
    (seed_id,) = [
        r["id"]
        for r in await rows(db, "SELECT id FROM item WHERE conversation_id = :c AND position = 0", c=conversation)
    ]

    await _delete(alice.http, f"/v1/conversations/{conversation}")

    # Gone for every API.
    for method, path in [
        ("GET", f"/v1/conversations/{conversation}"),
        ("POST", f"/v1/conversations/{conversation}"),
        ("DELETE", f"/v1/conversations/{conversation}"),
        ("GET", f"/v1/conversations/{conversation}/items"),
        ("GET", f"/v1/conversations/{conversation}/items/{seed_id}"),
    ]:
        again = await alice.http.request(method, path, json={"metadata": {}} if method == "POST" else None)
        assert again.status_code == 404, (method, path, again.text)
        assert again.json()["error"]["message"] == f"Conversation with id '{conversation}' not found."
    continued = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "x", "conversation": conversation}
    )
    assert continued.status_code == 404
    assert continued.json()["error"]["param"] == "conversation"
    listed = (await admin.get("/admin/threads", params={"tenant": "alice"})).json()["data"]
    assert conversation not in [thread["id"] for thread in listed]
    # Its items can no longer be referenced, except those a response carried (its input_items still list them).
    referenced = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [{"type": "item_reference", "id": seed_id}]}
    )
    assert referenced.status_code == 404, referenced.text
    assert referenced.json()["error"]["param"] == "input[0].id"
    requests_before = len(fake_upstream.requests)

    # Stored: the items before its last response, that response's own; not the item added after it.
    assert [r["id"] for r in await rows(db, "SELECT id FROM item WHERE id = :i", i=added_id)] == []
    stored = await rows(db, "SELECT count(*) AS n FROM item WHERE conversation_id = :c", c=conversation)
    assert stored == [{"n": len(history)}]
    assert await rows(
        db, "SELECT deleted_at IS NOT NULL AS deleted FROM conversation WHERE id = :c", c=conversation
    ) == [{"deleted": True}]
    assert len(fake_upstream.requests) == requests_before

    # Each response still shows its conversation and continues with what preceded it there.
    shown = (await alice.http.get(f"/v1/responses/{second['id']}")).json()
    assert shown["conversation"] == {"id": conversation}
    _answer(fake_upstream, "from first")
    await turn(alice.http, "after first", previous_response_id=first["id"])
    assert fake_upstream.inputs[-1] == [*history[:3], user("after first")]
    _answer(fake_upstream, "from second")
    await turn(alice.http, "name?", previous_response_id=second["id"])
    assert fake_upstream.inputs[-1] == [*history, user("name?")]
    cold_server = start_server()
    headers = {"Authorization": f"Bearer {alice.key}"}
    async with httpx.AsyncClient(base_url=cold_server.url, headers=headers, timeout=30) as cold:
        _answer(fake_upstream, "cold")
        await turn(cold, "name?", previous_response_id=second["id"])
    assert fake_upstream.inputs[-1] == [*history, user("name?")]


async def test_an_operator_looking_it_up_by_id_sees_a_deleted_conversation_marked_deleted(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, server: LiveServer
) -> None:
    """Its responses name it (their `conversation_id`): an operator following one finds what it keeps, marked
    deleted, where the lists no longer show it."""
    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    live, _, _ = await _conversation_with_two_turns(alice, fake_upstream)
    await _delete(alice.http, f"/v1/conversations/{conversation}")

    for path in (f"/admin/conversations/{conversation}", f"/admin/threads/{conversation}"):
        shown = await admin.get(path)
        assert shown.status_code == 200, (path, shown.text)
        assert (shown.json()["id"], shown.json()["deleted"]) == (conversation, True)
        assert (await admin.get(path.replace(conversation, live))).json()["deleted"] is False
    detail = (await admin.get(f"/admin/conversations/{conversation}")).json()
    kept = detail["items"]["data"]
    assert [item["id"] for item in kept if item["role"] == "assistant"] == ["msg_hello", "msg_fine"]
    assert [item["content"][0]["text"] for item in kept] == [
        "My name is Ada",
        "hi",
        "hello",
        "how are you?",
        "fine",
    ]
    assert len(kept) == len(history)
    assert sorted(r["id"] for r in detail["responses"]["data"]) == sorted([first["id"], second["id"]])
    thread = (await admin.get(f"/admin/threads/{conversation}")).json()
    assert [r["id"] for r in thread["responses"]["data"]] == [first["id"], second["id"]]
    responses = (await admin.get("/admin/responses", params={"conversation": conversation})).json()["data"]
    assert [(r["id"], r["conversation_id"]) for r in responses] == [
        (second["id"], conversation),
        (first["id"], conversation),
    ]
    for listing in ("/admin/threads", "/admin/conversations"):
        listed = [row["id"] for row in (await admin.get(listing, params={"tenant": "alice"})).json()["data"]]
        assert listed == [live], listing

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as browser:
        assert (await sign_in(browser, server.settings.admin_api_key)).status_code == 303
        page = await browser.get(f"/admin/ui/threads/{conversation}")
        assert page.status_code == 200 and 'id="deleted-note"' in page.text
        assert 'id="deleted-note"' not in (await browser.get(f"/admin/ui/threads/{live}")).text

    # Once its last response goes, so does the conversation, for operators too.
    await _delete(alice.http, f"/v1/responses/{second['id']}")
    await _delete(alice.http, f"/v1/responses/{first['id']}")
    for path in (f"/admin/conversations/{conversation}", f"/admin/threads/{conversation}"):
        assert (await admin.get(path)).status_code == 404, path


async def test_a_deleted_conversation_goes_with_its_last_response(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    a3 = _answer(fake_upstream, "chained")
    chained = await turn(alice.http, "chained", previous_response_id=second["id"])
    await _delete(alice.http, f"/v1/conversations/{conversation}")

    # The first response's items stay as the second's history once the first is deleted.
    await _delete(alice.http, f"/v1/responses/{first['id']}")
    assert (await alice.http.get(f"/v1/responses/{first['id']}")).status_code == 404
    _answer(fake_upstream, "still")
    await turn(alice.http, "name?", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == [*history, user("chained"), a3, user("name?")]

    # The second is continued by a chain: deleting it only hides it, and the conversation stays.
    await _delete(alice.http, f"/v1/responses/{second['id']}")
    conversation_rows = "SELECT id FROM conversation WHERE id = :c"
    assert await rows(db, conversation_rows, c=conversation) == [{"id": conversation}]
    _answer(fake_upstream, "again")
    await turn(alice.http, "name?", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == [*history, user("chained"), a3, user("name?")]

    # Once nothing builds on them, the hidden response and the conversation go, with all they held.
    for response in await rows(db, "SELECT id FROM response WHERE previous_response_id IS NOT NULL"):
        if response["id"] != chained["id"]:
            await _delete(alice.http, f"/v1/responses/{response['id']}")
    await _delete(alice.http, f"/v1/responses/{chained['id']}")
    assert await rows(db, conversation_rows, c=conversation) == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []


async def test_deleting_its_last_two_responses_at_once_leaves_nothing_of_a_deleted_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    for _ in range(5):
        conversation, (first, second), _ = await _conversation_with_two_turns(alice, fake_upstream)
        await _delete(alice.http, f"/v1/conversations/{conversation}")
        answers = await asyncio.gather(
            alice.http.delete(f"/v1/responses/{first['id']}"), alice.http.delete(f"/v1/responses/{second['id']}")
        )
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=conversation) == []
        assert await rows(db, "SELECT id FROM item WHERE thread_id = :c", c=conversation) == []


async def _age_responses(db: AsyncEngine, ids: list[str], days: int) -> None:
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE response SET created_at = now() - make_interval(days => :d) WHERE id = ANY(:ids)"),
            {"d": days, "ids": ids},
        )


async def test_retention_keeps_a_deleted_conversations_history_while_a_kept_response_needs_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    a3 = _answer(fake_upstream, "chained")
    chained = await turn(alice.http, "chained", previous_response_id=second["id"])
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    await _age_responses(db, [first["id"], second["id"]], 40)
    policy = {"responses_days": 30, "conversations_idle_days": 30}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200

    # The chain's response is recent: it needs the second response, which needs the first's items.
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["responses"], preview["conversations"], preview["items"]) == (0, 0, 0)
    run = (await admin.post("/admin/retention/run")).json()
    assert (run["responses"], run["conversations"], run["items"]) == (0, 0, 0)
    _answer(fake_upstream, "kept")
    await turn(alice.http, "name?", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == [*history, user("chained"), a3, user("name?")]

    # Once the chain is old too, everything goes, last response first, over the run's batches.
    everything = [r["id"] for r in await rows(db, "SELECT id FROM response")]
    await _age_responses(db, everything, 40)
    items = len(await rows(db, "SELECT pk FROM item"))
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["responses"], preview["conversations"], preview["items"]) == (len(everything), 0, items)
    run = (await admin.post("/admin/retention/run")).json()
    assert (run["responses"], run["conversations"], run["items"]) == (len(everything), 0, items)
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT pk FROM item") == []


async def test_retention_takes_a_deleted_conversations_old_responses_from_the_last_one_back(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    a3 = _answer(fake_upstream, "third")
    third = await turn(alice.http, "third?", conversation=conversation)
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    # The first two are old, the last one recent: the first two stay as its history.
    await _age_responses(db, [first["id"], second["id"]], 40)
    assert (
        await admin.put("/admin/tenants/alice/retention", json={"responses_days": 30, "conversations_idle_days": None})
    ).status_code == 200
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["responses"], preview["items"]) == (0, 0)
    assert (await admin.post("/admin/retention/run")).json()["responses"] == 0
    _answer(fake_upstream, "whole")
    await turn(alice.http, "name?", previous_response_id=third["id"])
    assert fake_upstream.inputs[-1] == [*history, user("third?"), a3, user("name?")]

    # The last one old as well: all three go, and the items they needed with them.
    await _age_responses(db, [r["id"] for r in await rows(db, "SELECT id FROM response")], 40)
    items = len(await rows(db, "SELECT pk FROM item"))
    responses = len(await rows(db, "SELECT id FROM response"))
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["responses"], preview["items"]) == (responses, items)
    run = (await admin.post("/admin/retention/run")).json()
    assert (run["responses"], run["items"]) == (responses, items)
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT pk FROM item") == []


async def test_an_operator_erases_what_a_deleted_conversation_keeps(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    conversation, (_, second), _ = await _conversation_with_two_turns(alice, fake_upstream)
    await turn(alice.http, "chained", previous_response_id=second["id"])
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    erased = await admin.delete(f"/admin/conversations/{conversation}")
    assert erased.status_code == 200, erased.text
    assert erased.json() == {
        "id": conversation,
        "object": "conversation.deleted",
        "deleted": True,
        "deleted_responses": 3,
    }
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT pk FROM item") == []


async def test_deleting_a_conversation_and_its_last_response_at_once_leaves_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Whichever commits first, the other sees it: the response's delete locks the conversation's row first."""
    for _ in range(10):
        conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "secret"}])
        _answer(fake_upstream, "a")
        only = await turn(alice.http, "hi", conversation=conversation)
        answers = await asyncio.gather(
            alice.http.delete(f"/v1/conversations/{conversation}"), alice.http.delete(f"/v1/responses/{only['id']}")
        )
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=conversation) == []
        assert await rows(db, "SELECT pk FROM item WHERE thread_id = :c", c=conversation) == []


async def _locks_awaited(db: AsyncEngine, count: int) -> bool:
    return await requests_waiting_on_a_lock(db) >= count


async def test_an_operators_erase_waits_for_the_tenants_delete_of_a_response_and_neither_fails(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    """Both lock the conversation's row, then its responses: they queue, never deadlock (a 500)."""
    conversation, (_, second), _ = await _conversation_with_two_turns(alice, fake_upstream)
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    # The tenant's delete is paused on one of the response's items, holding what it locked before.
    async with db.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(
            text("SELECT pk FROM item WHERE response_id = :r ORDER BY pk LIMIT 1 FOR UPDATE"), {"r": second["id"]}
        )
        tenant_delete = asyncio.create_task(alice.http.delete(f"/v1/responses/{second['id']}"))
        await eventually(lambda: _locks_awaited(db, 1))
        operator_erase = asyncio.create_task(admin.delete(f"/admin/conversations/{conversation}"))
        await eventually(lambda: _locks_awaited(db, 2))
        await transaction.rollback()
    tenant, operator = await asyncio.gather(tenant_delete, operator_erase)
    assert tenant.status_code == 200, tenant.text
    assert operator.status_code == 200, operator.text
    assert operator.json()["deleted_responses"] == 1
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT pk FROM item") == []

    for _ in range(10):
        conversation, (_, second), _ = await _conversation_with_two_turns(alice, fake_upstream)
        await _delete(alice.http, f"/v1/conversations/{conversation}")
        tenant, operator = await asyncio.gather(
            alice.http.delete(f"/v1/responses/{second['id']}"), admin.delete(f"/admin/conversations/{conversation}")
        )
        assert tenant.status_code in (200, 404), tenant.text
        assert operator.status_code in (200, 404), operator.text
        assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=conversation) == []


async def _failed_turn(tenant: Tenant, fake: FakeOpenRouter, conversation: str) -> str:
    fake.reply_json({"error": {"message": "bad", "code": 400}}, status=400)
    failed = await tenant.http.post(
        "/v1/responses", json={"model": MODEL, "input": "boom", "conversation": conversation, "background": True}
    )
    assert failed.status_code == 200, failed.text
    response_id: str = failed.json()["id"]

    async def failed_now() -> bool:
        return bool((await tenant.http.get(f"/v1/responses/{response_id}")).json()["status"] == "failed")

    await eventually(failed_now)
    return response_id


async def test_a_failed_turn_keeps_nothing_of_a_deleted_conversation(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    """A failed turn added nothing to the conversation and cannot be continued: no history is kept for it."""
    alone = await new_conversation(alice.http, items=[{"role": "user", "content": "my secret"}])
    failed_alone = await _failed_turn(alice, fake_upstream, alone)
    await _delete(alice.http, f"/v1/conversations/{alone}")
    assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=alone) == []
    assert await rows(db, "SELECT pk FROM item WHERE conversation_id = :c", c=alone) == []
    assert (await alice.http.get(f"/v1/responses/{failed_alone}")).status_code == 200

    conversation, (first, second), history = await _conversation_with_two_turns(alice, fake_upstream)
    added = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "typed after the last answer"}]},
    )
    added_id = added.json()["data"][0]["id"]
    await _failed_turn(alice, fake_upstream, conversation)
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    assert await rows(db, "SELECT id FROM item WHERE id = :i", i=added_id) == []
    stored = await rows(db, "SELECT count(*) AS n FROM item WHERE conversation_id = :c", c=conversation)
    assert stored == [{"n": len(history)}]
    # Old answered responses are not held by the failed one after them.
    await _age_responses(db, [first["id"], second["id"]], 40)
    policy = {"responses_days": 30, "conversations_idle_days": None}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    run = (await admin.post("/admin/retention/run")).json()
    assert (preview["responses"], preview["items"]) == (run["responses"], run["items"]) == (2, len(history))
    assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=conversation) == []


async def test_retention_finishes_a_deleted_conversation_whose_last_response_went_while_it_was_held(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    """A response's delete never waits for a row another transaction holds: what it leaves, the next run takes,
    whatever the tenant's policy."""
    conversation, (first, second), _ = await _conversation_with_two_turns(alice, fake_upstream)
    await _delete(alice.http, f"/v1/conversations/{conversation}")
    await _delete(alice.http, f"/v1/responses/{second['id']}")
    # As a delete of the last response leaves it when the conversation's row is held elsewhere meanwhile.
    async with db.begin() as conn:
        await conn.execute(text("UPDATE item SET response_id = NULL WHERE response_id = :r"), {"r": first["id"]})
        await conn.execute(text("DELETE FROM response WHERE id = :r"), {"r": first["id"]})
    left = len(await rows(db, "SELECT pk FROM item WHERE conversation_id = :c", c=conversation))
    assert left == 3  # the seed, and the first turn's items
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["responses"], preview["items"]) == (0, left)
    run = (await admin.post("/admin/retention/run")).json()
    assert (run["responses"], run["conversations"], run["items"]) == (0, 0, left)
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT pk FROM item") == []


async def test_retention_racing_a_conversations_delete_leaves_nothing_after_the_next_run(
    alice: Tenant, fake_upstream: FakeOpenRouter, admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    policy = {"responses_days": 30, "conversations_idle_days": None}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    for _ in range(8):
        conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "secret"}])
        _answer(fake_upstream, "a")
        only = await turn(alice.http, "hi", conversation=conversation)
        await _age_responses(db, [only["id"]], 40)
        run, deleted = await asyncio.gather(
            admin.post("/admin/retention/run"), alice.http.delete(f"/v1/conversations/{conversation}")
        )
        assert (run.status_code, deleted.status_code) == (200, 200), (run.text, deleted.text)
        assert (await admin.post("/admin/retention/run")).status_code == 200
        assert await rows(db, "SELECT id FROM conversation WHERE id = :c", c=conversation) == []
        assert await rows(db, "SELECT pk FROM item WHERE thread_id = :c", c=conversation) == []


async def test_a_failed_response_of_a_deleted_conversation_is_refused_for_its_status(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A conversation holding only a failed turn goes at once when deleted, leaving that response outside it: the
    answer to continuing it names its status, not a history a retention purge removed (that is for responses
    that answered, tests/test_retention.py)."""
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json({"error": {"code": 400, "message": "Provider refused"}}, status=400)
    refused = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation})
    assert refused.status_code == 400
    (failed,) = await rows(db, "SELECT id FROM response WHERE status = 'failed'")
    assert (await alice.http.delete(f"/v1/conversations/{conversation}")).status_code == 200
    assert await rows(db, "SELECT conversation_id FROM response") == [{"conversation_id": None}]
    again = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "again", "previous_response_id": failed["id"]}
    )
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "previous_response_not_usable"
    assert "has status 'failed'" in again.json()["error"]["message"]
