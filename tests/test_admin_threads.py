"""/admin/threads: conversations and previous_response_id chains listed side by side as threads, a chain shown as
its tree, a whole chain hard-deleted, and /admin/responses?q=. Rows come from real turns through /v1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.admin import repository as admin_repository
from service.admin import search
from service.admin.cursor import Keyset
from service.admin.params import ConversationFilters, ResponseFilters, ThreadFilters
from service.threads import repository
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.test_admin import rows_mentioning
from tests.turn_support import MODEL, new_conversation, rows, turn


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


async def walk(admin: httpx.AsyncClient, path: str, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Every row of a keyset list, page by page."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await admin.get(path, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        found.extend(body["data"])
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return found
        cursor = body["next_cursor"]


async def thread_ids(admin: httpx.AsyncClient, **params: Any) -> list[str]:
    return [row["id"] for row in await walk(admin, "/admin/threads", params, 100)]


async def ten_turns_branching_at_four(tenant: Tenant, word: str = "") -> list[dict[str, Any]]:
    """Turns 1-10 each continuing the one before; an 11th continues turn 4 (a branch). `word` is in turn 7."""
    chain: list[dict[str, Any]] = []
    for index in range(1, 11):
        words = f"turn {index} {word if index == 7 else ''}"
        previous = {"previous_response_id": chain[-1]["id"]} if chain else {}
        chain.append(await turn(tenant.http, words, **previous))
    chain.append(await turn(tenant.http, "the branch", previous_response_id=chain[3]["id"]))
    return chain


async def test_a_branched_chain_is_one_thread_beside_conversations_with_totals_and_last_activity(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant
) -> None:
    older = await new_conversation(bob.http)
    await turn(bob.http, "hello", conversation=older)
    chain = await ten_turns_branching_at_four(alice)
    newer = await new_conversation(bob.http, metadata={"team": "red"})

    listed = await walk(admin, "/admin/threads", {}, 2)
    assert [(row["id"], row["kind"]) for row in listed] == [
        (newer, "conversation"),
        (chain[0]["id"], "chain"),
        (older, "conversation"),
    ]
    row = listed[1]
    assert row["object"] == "admin.thread" and row["tenant"] == "alice"
    assert (row["response_count"], row["item_count"]) == (11, 22)
    # The fake upstream reports 10 input and 5 output tokens and $0.00042 per turn.
    assert row["usage"] == {"input_tokens": 110, "output_tokens": 55, "total_tokens": 165, "cost": 0.00462}
    assert (row["last_model"], row["last_status"], row["title"]) == ("openai/gpt-4o-mini", "completed", "turn 1")
    assert row["created_at"] == chain[0]["created_at"]
    assert row["last_activity_at"] >= chain[-1]["completed_at"]
    # /admin/conversations is unchanged: conversations only.
    conversations = (await admin.get("/admin/conversations")).json()["data"]
    assert [c["id"] for c in conversations] == [newer, older]


async def test_filters_apply_to_both_kinds_alike(admin: httpx.AsyncClient, alice: Tenant, bob: Tenant) -> None:
    alice_conversation = await new_conversation(alice.http, metadata={"env": "prod"})
    await turn(alice.http, "in a conversation", conversation=alice_conversation)
    alice_chain = await turn(alice.http, "a chain", metadata={"env": "prod"})
    bob_chain = await turn(bob.http, "bob's chain", metadata={"env": "dev"})
    start = datetime.now(UTC)
    await asyncio.sleep(0.01)
    bob_late = await turn(bob.http, "late chain")

    assert set(await thread_ids(admin, tenant="alice")) == {alice_conversation, alice_chain["id"]}
    assert set(await thread_ids(admin, tenant="bob")) == {bob_chain["id"], bob_late["id"]}
    assert set(await thread_ids(admin, **{"metadata[env]": "prod"})) == {alice_conversation, alice_chain["id"]}
    assert await thread_ids(admin, kind="chain", tenant="alice") == [alice_chain["id"]]
    assert await thread_ids(admin, kind="conversation") == [alice_conversation]
    assert await thread_ids(admin, created_after=start.isoformat()) == [bob_late["id"]]
    assert await thread_ids(admin, updated_before=start.isoformat(), kind="chain") == [
        bob_chain["id"],
        alice_chain["id"],
    ]
    assert len(await thread_ids(admin, model="openai/gpt-4o-mini", status="completed")) == 4
    assert await thread_ids(admin, model="other/model") == []
    assert await thread_ids(admin, status="failed") == []

    for bad, param in (({"kind": "tree"}, "kind"), ({"q": "x", "qq": "y"}, "qq"), ({"limit": "0"}, "limit")):
        refused = await admin.get("/admin/threads", params=bad)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param
    foreign = (await admin.get("/admin/conversations", params={"limit": 1})).json()
    assert foreign["has_more"] is False
    page = (await admin.get("/admin/threads", params={"limit": 1})).json()
    wrong_list = await admin.get("/admin/conversations", params={"cursor": page["next_cursor"]})
    assert wrong_list.status_code == 400 and wrong_list.json()["error"]["code"] == "invalid_cursor"


async def test_search_finds_a_chain_by_a_word_of_one_of_its_items_and_the_responses_holding_it(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    chain = await ten_turns_branching_at_four(alice, word="quokka")
    conversation = await new_conversation(bob.http)
    fake_upstream.reply_json(text_response("a quokka answer"))
    in_conversation = await turn(bob.http, "tell me", conversation=conversation)
    # A chain continuing a conversation's response is in the conversation's thread.
    fake_upstream.reply_json(text_response("wombat only here"))
    continued = await turn(bob.http, "continue", previous_response_id=in_conversation["id"])
    unrelated = await turn(alice.http, "nothing to find")

    assert await thread_ids(admin, q="quokka") == [conversation, chain[0]["id"]]
    assert await thread_ids(admin, q="quokka", tenant="alice") == [chain[0]["id"]]
    assert await thread_ids(admin, q="quokka", kind="conversation") == [conversation]
    assert await thread_ids(admin, q="wombat") == [conversation]
    assert unrelated["id"] in await thread_ids(admin, q="nothing")

    found = await walk(admin, "/admin/responses", {"q": "quokka"}, 1)
    assert [r["id"] for r in found] == [in_conversation["id"], chain[6]["id"]]
    assert [r["id"] for r in await walk(admin, "/admin/responses", {"q": "wombat"}, 10)] == [continued["id"]]
    assert await walk(admin, "/admin/responses", {"q": "quokka", "tenant": "bob", "status": "failed"}, 10) == []


async def add_needles(db: AsyncEngine, response_id: str, count: int) -> None:
    """`count` more input items of the response, each holding the word "needle" (written directly: a search's
    caps are thousands of matches)."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO item (id, tenant_id, response_id, is_output, ordinal, thread_id, type, role, status, "
                "body, text_content) SELECT 'msg_many_' || g, tenant_id, id, false, g, thread_id, 'message', "
                "'user', 'completed', '{}', 'needle in a haystack' FROM response, generate_series(1, :n) g "
                "WHERE id = :id"
            ),
            {"id": response_id, "n": count},
        )


async def test_search_above_the_index_read_cap_walks_threads_with_the_same_answers(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine
) -> None:
    crowded = await turn(alice.http, "ordinary words")
    chain = await ten_turns_branching_at_four(alice, word="needle")
    await add_needles(db, crowded["id"], search.SEARCH_SCAN_CAP + 10)
    assert await thread_ids(admin, q="needle") == [chain[0]["id"], crowded["id"]]
    assert [row["id"] for row in await walk(admin, "/admin/threads", {"q": "needle"}, 1)] == [
        chain[0]["id"],
        crowded["id"],
    ]
    assert await thread_ids(admin, q="needle haystack") == [crowded["id"]]
    responses = await walk(admin, "/admin/responses", {"q": "needle"}, 1)
    assert [r["id"] for r in responses] == [chain[6]["id"], crowded["id"]]


# How many items of one response say "needle", for each way a search page is filled (service/admin/search.py).
_CROWDS = {
    "rare": 5,
    "between": search.SEARCH_PROBE_CAP + 20,
    "common": search.SEARCH_SCAN_CAP + 100,
    # Statistics taken while the word was common, then its items deleted: the estimate says common, the walk
    # that goes first is cut by its budget (forced below the list's length) before it fills a page, and the
    # page comes from reading the few matches left.
    "stale": search.SEARCH_SCAN_CAP + 100,
    # The walk that goes first is cut by its budget before it fills a page; the common walk answers.
    "cut": search.SEARCH_SCAN_CAP + 100,
}


def _ran(plan: str, marker: str) -> list[bool]:
    """For each line of an EXPLAIN ANALYZE holding `marker`: whether its plan node ran."""
    lines = plan.splitlines()
    found = []
    for index, line in enumerate(lines):
        if marker in line:
            node = next(n for n in reversed(lines[: index + 1]) if "(actual" in n or "(never executed)" in n)
            found.append("(never executed)" not in node)
    assert found, (marker, plan)
    return found


@pytest.mark.parametrize("crowd", list(_CROWDS))
async def test_every_way_of_filling_a_search_page_gives_the_same_pages(
    admin: httpx.AsyncClient,
    alice: Tenant,
    bob: Tenant,
    db: AsyncEngine,
    fake_upstream: FakeOpenRouter,
    monkeypatch: pytest.MonkeyPatch,
    crowd: str,
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("a plain answer"))
    in_conversation = await turn(alice.http, "the needle in a conversation", conversation=conversation)
    chain = await ten_turns_branching_at_four(alice, word="needle")
    crowded = await turn(bob.http, "ordinary words")
    for words in ("nothing here", "nor here"):
        await turn(bob.http, words)
    await add_needles(db, crowded["id"], _CROWDS[crowd])
    async with db.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("ANALYZE item"))
    if crowd == "stale":
        async with db.begin() as conn:
            await conn.execute(text("DELETE FROM item WHERE id LIKE 'msg_many_%' AND ordinal > 3"))
    if crowd in ("stale", "cut"):
        monkeypatch.setattr(search, "SEARCH_WALK_BUDGET", 2)

    everything = await thread_ids(admin)
    expected = [t for t in everything if t in {conversation, chain[0]["id"], crowded["id"]}]
    assert len(expected) == 3
    for limit in (1, 2, 100):
        assert [row["id"] for row in await walk(admin, "/admin/threads", {"q": "needle"}, limit)] == expected
    assert await thread_ids(admin, q="needle", tenant="alice") == [t for t in expected if t != crowded["id"]]
    assert await thread_ids(admin, q="needle", kind="chain") == [t for t in expected if t != conversation]
    assert await thread_ids(admin, q="needle haystack") == [crowded["id"]]
    assert [row["id"] for row in await walk(admin, "/admin/conversations", {"q": "needle"}, 1)] == [conversation]
    responses = await walk(admin, "/admin/responses", {}, 100)
    wanted = {in_conversation["id"], chain[6]["id"], crowded["id"]}
    expected_responses = [r["id"] for r in responses if r["id"] in wanted]
    for limit in (1, 100):
        found = await walk(admin, "/admin/responses", {"q": "needle"}, limit)
        assert [r["id"] for r in found] == expected_responses
    found = await walk(admin, "/admin/responses", {"q": "needle", "tenant": "bob"}, 1)
    assert [r["id"] for r in found] == [crowded["id"]]

    # And the page came the way this crowd of matches calls for.
    async with db.connect() as conn:
        await admin_repository.plan_each_page(conn)
        walk_first = await search.walk_budget(conn, "needle", 21, owners="responses")
        statement = admin_repository.response_pages.bound(
            ResponseFilters(q="needle"), None, Keyset(limit=20), walk_first
        )
        plan = await admin_repository.explain(conn, statement, "ANALYZE, COSTS OFF, TIMING OFF")
    # The walk goes first for a word the statistics call common, for at least a page (a budget of 2 is forced).
    low, high = {"common": (21, search.SEARCH_WALK_BUDGET), "stale": (2, 2), "cut": (2, 2)}.get(crowd, (0, 0))
    assert low <= walk_first <= high, (walk_first, plan)
    probed = any(_ran(plan, "(id = (unnest("))  # `unnest($1)` on PostgreSQL 15, `unnest((InitPlan 1).col1)` later
    hashed = any(_ran(plan, "hashed SubPlan"))
    common_walk = _ran(plan, "IS NOT NULL)")[1]  # [0]: the walk that goes first, which always runs
    matches_read = any(_ran(plan, "(COALESCE(response_id, ''::text) <> ''::text)"))  # the bounded read
    # "common": the walk that goes first reaches the end of this short list, so its page is whole.
    assert (matches_read, probed, hashed, common_walk) == {
        "rare": (True, True, False, False),
        "between": (True, False, True, False),
        "common": (False, False, False, False),
        "stale": (True, True, False, False),
        "cut": (True, False, False, True),
    }[crowd], plan


async def test_a_chain_is_shown_as_its_tree_in_pages(admin: httpx.AsyncClient, alice: Tenant) -> None:
    chain = await ten_turns_branching_at_four(alice)
    nodes: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await admin.get(
            f"/admin/threads/{chain[0]['id']}", params={"limit": 4, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert (body["id"], body["kind"], body["response_count"]) == (chain[0]["id"], "chain", 11)
        nodes.extend(body["responses"]["data"])
        cursor = body["responses"]["next_cursor"]
        if not body["responses"]["has_more"]:
            break
    assert [n["id"] for n in nodes] == [r["id"] for r in chain]
    parents = {n["id"]: n["previous_response_id"] for n in nodes}
    assert parents[chain[0]["id"]] is None
    assert parents[chain[10]["id"]] == parents[chain[4]["id"]] == chain[3]["id"]  # the branch
    seventh = nodes[6]
    assert seventh["input"] == [
        {
            **seventh["input"][0],
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "turn 7 "}],
        }
    ]
    assert seventh["output"][0]["content"][0]["text"] == "Hello from the fake upstream."
    assert (seventh["status"], seventh["model"], seventh["upstream_model"]) == (
        "completed",
        MODEL,
        "openai/gpt-4o-mini",
    )
    assert seventh["usage"]["cost"] == 0.00042 and seventh["error"] is None

    missing = await admin.get("/admin/threads/resp_nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    other = await admin.get(f"/admin/threads/{chain[0]['id']}", params={"cursor": "garbage"})
    assert other.status_code == 400 and other.json()["error"]["param"] == "cursor"


async def test_deleting_a_chain_removes_every_row_of_it_and_nothing_else(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    kept = await turn(alice.http, "keep-this-one")
    root = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "doomed-root"}, headers={"Idempotency-Key": "idem-doomed"}
    )
    assert root.status_code == 200, root.text
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("doomed-streamed-answer")))
    streamed = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "doomed-child", "previous_response_id": root.json()["id"], "stream": True},
    )
    assert streamed.status_code == 200
    await turn(alice.http, "doomed-branch", previous_response_id=root.json()["id"])
    assert len(await rows(db, "SELECT * FROM response_event_log")) == 1
    needles = [
        "doomed-root",
        "doomed-child",
        "doomed-branch",
        "doomed-streamed-answer",
        "idem-doomed",
        root.json()["id"],
    ]
    assert {table for table, _ in await rows_mentioning(db, needles)} >= {
        "item",
        "response",
        "response_chain",
        "response_event_log",
        "idempotency_key",
    }

    deleted = await admin.delete(f"/admin/threads/{root.json()['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "id": root.json()["id"],
        "object": "admin.thread.deleted",
        "deleted": True,
        "deleted_responses": 3,
    }
    assert await rows_mentioning(db, needles) == []
    assert await thread_ids(admin) == [kept["id"]]
    assert await rows_mentioning(db, ["keep-this-one"])
    again = await admin.delete(f"/admin/threads/{root.json()['id']}")
    assert again.status_code == 404


async def test_deleting_a_conversation_thread_takes_the_chains_continuing_it(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "gone-direct"}])
    first = await turn(alice.http, "gone-first", conversation=conversation)
    await turn(alice.http, "gone-continued", previous_response_id=first["id"])
    deleted = await admin.delete(f"/admin/threads/{conversation}")
    assert deleted.status_code == 200 and deleted.json()["deleted_responses"] == 2
    assert await rows_mentioning(db, ["gone-direct", "gone-first", "gone-continued", conversation]) == []


async def test_a_chain_with_a_turn_in_flight_shows_it_and_is_not_deleted_under_it(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A background (or streamed) turn is stored when it begins: its chain shows its status while it runs. (A
    plain turn continuing a chain is stored whole when it ends, service/responses/turn_store.py: until then its
    chain shows its last finished turn.)"""
    root = await turn(alice.http, "start")
    # delay: between stream events (40 of them)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Background answer.", chunks=40), delay=0.04))
    running = await turn(alice.http, "slow", previous_response_id=root["id"], background=True)
    assert await thread_ids(admin, status="in_progress") == [root["id"]]
    assert await thread_ids(admin, status="completed") == []
    assert (await admin.get(f"/admin/threads/{root['id']}")).json()["last_status"] == "in_progress"
    refused = await admin.delete(f"/admin/threads/{root['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "thread_locked"
    for _ in range(200):
        if await thread_ids(admin, status="completed") == [root["id"]]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the background turn never finished")
    assert (await alice.http.get(f"/v1/responses/{running['id']}")).json()["status"] == "completed"
    assert (await admin.delete(f"/admin/threads/{root['id']}")).status_code == 200


async def test_a_conversation_with_a_chain_turn_in_flight_is_not_deleted_under_it_by_either_admin_route(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A background turn continuing one of the conversation's responses runs in the conversation's thread, though
    it holds no claim on the conversation: both hard deletes wait for it."""
    conversation = await new_conversation(alice.http)
    first = await turn(alice.http, "kept while it runs", conversation=conversation)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Background answer.", chunks=40), delay=0.04))
    running = await turn(alice.http, "slow", previous_response_id=first["id"], background=True)
    for route in (f"/admin/conversations/{conversation}", f"/admin/threads/{conversation}"):
        refused = await admin.delete(route)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "thread_locked", (route, refused.text)
    assert len(await rows_mentioning(db, ["kept while it runs"])) >= 1
    for _ in range(200):
        if (await alice.http.get(f"/v1/responses/{running['id']}")).json()["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the background turn never finished")
    deleted = await admin.delete(f"/admin/conversations/{conversation}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "id": conversation,
        "object": "conversation.deleted",
        "deleted": True,
        "deleted_responses": 2,
    }
    assert await rows_mentioning(db, ["kept while it runs", "slow", conversation]) == []
    assert (await admin.delete(f"/admin/conversations/{conversation}")).status_code == 404
    # A chain's id is not a conversation's: this route deletes conversations' threads only.
    chain = await turn(alice.http, "a chain")
    assert (await admin.delete(f"/admin/conversations/{chain['id']}")).status_code == 404


async def test_a_conversation_with_a_plain_chain_turn_in_flight_is_not_deleted_under_it_by_either_admin_route(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A plain turn continuing one of the conversation's responses stores nothing before its end, and a
    conversation's thread has no chain row to list it on: its note as that response's running child is what
    the hard deletes find. (Without it the delete went through and the turn's finish stored a response
    detached from its history.)"""
    conversation = await new_conversation(alice.http)
    first = await turn(alice.http, "kept under a plain turn", conversation=conversation)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Plain answer."), delay=1.0))
    running = asyncio.create_task(
        alice.http.post("/v1/responses", json={"model": MODEL, "input": "slow", "previous_response_id": first["id"]})
    )
    await fake_upstream.received(2)
    for route in (f"/admin/conversations/{conversation}", f"/admin/threads/{conversation}"):
        refused = await admin.delete(route)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "thread_locked", (route, refused.text)
    assert len(await rows_mentioning(db, ["kept under a plain turn"])) >= 1
    answer = await running
    assert answer.status_code == 200, answer.text
    stored = await rows(db, "SELECT previous_response_id, thread_id FROM response WHERE id = :r", r=answer.json()["id"])
    assert stored == [{"previous_response_id": first["id"], "thread_id": conversation}]
    deleted = await admin.delete(f"/admin/conversations/{conversation}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_responses"] == 2
    assert await rows_mentioning(db, ["kept under a plain turn", "slow", "Plain answer.", conversation]) == []


async def test_threads_with_turns_in_flight_page_by_status_like_by_any_other_filter(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A running status's page starts from the threads that may have a turn in flight (the claimed
    conversations, the chains listing a plain turn, the threads of stored running turns), probed one by one:
    the same pages, cursors, tenants and kinds as a walk of the list."""
    finished = await new_conversation(alice.http)
    await turn(alice.http, "done", conversation=finished)
    finished_chain = await turn(bob.http, "done too")
    conversations = [await new_conversation(tenant.http) for tenant in (alice, bob, alice)]
    chain = await turn(bob.http, "a chain")
    fake_upstream.enqueue(*(Reply(kind="json", body=text_response("Slow answer."), delay=2.5) for _ in range(4)))
    running = [
        asyncio.create_task(turn(tenant.http, "take your time", conversation=conversation))
        for tenant, conversation in zip((alice, bob, alice), conversations, strict=True)
    ]
    running.append(asyncio.create_task(turn(bob.http, "take your time", previous_response_id=chain["id"])))
    in_flight = {*conversations, chain["id"]}
    for _ in range(100):
        if set(await thread_ids(admin, status="in_progress")) == in_flight:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the threads never all listed as in_progress")

    expected = [t for t in await thread_ids(admin) if t in in_flight]
    for limit in (1, 2, 100):
        assert [row["id"] for row in await walk(admin, "/admin/threads", {"status": "in_progress"}, limit)] == expected
    alices = [t for t in expected if t in (conversations[0], conversations[2])]
    assert await thread_ids(admin, status="in_progress", tenant="alice") == alices
    assert await thread_ids(admin, status="in_progress", kind="chain") == [chain["id"]]
    assert await thread_ids(admin, status="in_progress", kind="conversation") == [
        t for t in expected if t != chain["id"]
    ]
    assert await thread_ids(admin, status="queued") == []
    assert set(await thread_ids(admin, status="completed")) == {finished, finished_chain["id"]}
    listed = await walk(admin, "/admin/conversations", {"status": "in_progress"}, 1)
    assert [row["id"] for row in listed] == [t for t in expected if t != chain["id"]]
    assert {row["last_status"] for row in listed} == {"in_progress"}
    bobs = await walk(admin, "/admin/conversations", {"status": "in_progress", "tenant": "bob"}, 1)
    assert [row["id"] for row in bobs] == [conversations[1]]

    await asyncio.gather(*running)
    assert await thread_ids(admin, status="in_progress") == []
    assert set(await thread_ids(admin, status="completed")) == {finished, finished_chain["id"], *in_flight}


@pytest.mark.parametrize(
    ("filters", "indexes"),
    [
        (ThreadFilters(), ["ix_conversation_updated_at_id", "ix_response_chain_updated_at_id"]),
        (ThreadFilters(tenant="t"), ["ix_conversation_tenant_id_updated_at_id", "ix_response_chain_tenant_id_updated"]),
        (ThreadFilters(model="m"), ["ix_conversation_last_model_updated_at_id", "ix_response_chain_last_model_upd"]),
        (
            ThreadFilters(status="failed"),
            ["ix_conversation_last_status_updated_at_id", "ix_response_chain_last_status"],
        ),
        (ThreadFilters(status="queued"), ["ix_response_status_created_at_id"]),
        (ThreadFilters(metadata={"k": "v"}), ["ix_conversation_metadata", "ix_response_chain_metadata"]),
        (ThreadFilters(q="word"), ["ix_item_search_vector"]),
        (ThreadFilters(kind="chain"), ["ix_response_chain_updated_at_id", "ix_response_running_thread_id"]),
    ],
)
async def test_every_thread_filter_has_an_index_path_without_offset(
    db: AsyncEngine, filters: ThreadFilters, indexes: list[str]
) -> None:
    keyset = Keyset(limit=20, after=(datetime(2030, 1, 1, tzinfo=UTC), "conv_z"))
    statement = repository.thread_pages.bound(filters, "t" if filters.tenant else None, keyset)
    assert "OFFSET" not in str(statement.compile(db.sync_engine)).upper()
    async with db.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = await admin_repository.explain(conn, statement)
    for table in ("conversation", "response_chain", "item", "response"):
        assert f"Seq Scan on {table} " not in plan, plan
    for index in indexes:
        assert index in plan, plan


@pytest.mark.parametrize("status", ["in_progress", "queued"])
async def test_a_running_status_page_probes_its_candidates_rather_than_walking_the_list(
    db: AsyncEngine, status: str
) -> None:
    """A claim is marked by nothing indexed, so a page of threads with a turn in flight starts from the few
    candidates (a sequential scan for the claims, the status index for stored turns) and probes each by id,
    whatever the estimates: never a walk of the list's keyset index, as long as the planner guesses."""
    keyset = Keyset(limit=20, after=(datetime(2030, 1, 1, tzinfo=UTC), "conv_z"))
    statements = [
        admin_repository.conversation_pages.bound(ConversationFilters(status=status), None, keyset),
        repository.thread_pages.bound(ThreadFilters(status=status), None, keyset),
        repository.thread_pages.bound(ThreadFilters(status=status, tenant="t"), "t", keyset),
    ]
    for statement in statements:
        for seqscan in ("on", "off"):
            async with db.connect() as conn:
                await admin_repository.plan_each_page(conn)
                await conn.execute(text(f"SET enable_seqscan = {seqscan}"))
                plan = await admin_repository.explain(conn, statement)
            assert "id = (unnest(" in plan, plan
            assert "ix_conversation_updated_at_id" not in plan, plan
            assert "ix_response_chain_updated_at_id" not in plan, plan


def _every_list(filters: dict[str, Any], tenant_id: str, keyset: Keyset) -> list[Any]:
    response_filters = {k: v for k, v in filters.items() if k in ("model", "q", "created_after", "created_before")}
    return [
        admin_repository.conversation_pages.bound(ConversationFilters(**filters), tenant_id, keyset, 7),
        repository.thread_pages.bound(ThreadFilters(**filters), tenant_id, keyset, 7),
        admin_repository.response_pages.bound(ResponseFilters(**response_filters), tenant_id, keyset, 7),
    ]


@pytest.mark.parametrize("q", [None, "word"])
def test_list_statements_are_built_once_per_shape_and_take_every_value_as_a_parameter(
    db: AsyncEngine, q: str | None
) -> None:
    """A list's statement is built once for a set of filters and reused with each request's values: no value
    of one request may stay in the statement another runs."""
    one = {
        "tenant": "alice",
        "model": "model-one",
        "metadata": {"team": "red"},
        "created_after": datetime(2026, 1, 1, tzinfo=UTC),
        "updated_before": datetime(2026, 2, 1, tzinfo=UTC),
        "q": q and "first words",
    }
    two = {
        **one,
        "tenant": "bob",
        "model": "model-two",
        "metadata": {"team": "blue"},
        "created_after": datetime(2027, 1, 1, tzinfo=UTC),
        "updated_before": datetime(2027, 2, 1, tzinfo=UTC),
        "q": q and "other words",
    }
    firsts = _every_list(one, "ten_one", Keyset(limit=5, after=(datetime(2030, 1, 1, tzinfo=UTC), "conv_one")))
    seconds = _every_list(two, "ten_two", Keyset(limit=9, after=(datetime(2031, 1, 1, tzinfo=UTC), "conv_two")))
    for first, second in zip(firsts, seconds, strict=True):
        compiled_first, compiled_second = first.compile(db.sync_engine), second.compile(db.sync_engine)
        assert compiled_first.string == compiled_second.string
        assert compiled_second.params["tenant_id"] == "ten_two" and compiled_second.params["page"] == 10
        assert compiled_second.params["after_id"] == "conv_two"
        leftovers = {repr(value) for value in compiled_second.params.values()} & {
            repr(value) for value in compiled_first.params.values()
        }
        # Only the constants of the statement (the search's caps, status and kind names) are in both.
        assert all(
            not any(mark in leftover for mark in ("one", "2026", "2030", "red", "first")) for leftover in leftovers
        )


def _search_statements(walk_first: int = 0) -> list[tuple[str, Any, str]]:
    keyset = Keyset(limit=20)
    return [
        (
            "conversations",
            admin_repository.conversation_pages.bound(ConversationFilters(q="word"), None, keyset, walk_first),
            "ix_item_conversation_id_id",
        ),
        (
            "threads",
            repository.thread_pages.bound(ThreadFilters(q="word"), None, keyset, walk_first),
            "ix_item_thread_id",
        ),
        (
            "threads of a tenant",
            repository.thread_pages.bound(ThreadFilters(q="word", tenant="t"), "t", keyset, walk_first),
            "ix_item_thread_id",
        ),
        (
            "conversations of a tenant",
            admin_repository.conversation_pages.bound(
                ConversationFilters(q="word", tenant="t"), "t", keyset, walk_first
            ),
            "ix_item_conversation_id_id",
        ),
        (
            "responses",
            admin_repository.response_pages.bound(ResponseFilters(q="word"), None, keyset, walk_first),
            "ix_item_response_id_is_output_ordinal",
        ),
        (
            "responses of a tenant",
            admin_repository.response_pages.bound(ResponseFilters(q="word", tenant="t"), "t", keyset, walk_first),
            "ix_item_response_id_is_output_ordinal",
        ),
    ]


@pytest.mark.parametrize("walk_first", [0, search.SEARCH_WALK_BUDGET])
@pytest.mark.parametrize("case", range(len(_search_statements())))
async def test_search_pages_have_one_plan_whatever_the_estimates(db: AsyncEngine, case: int, walk_first: int) -> None:
    """Planned on this nearly empty database, where every word looks rare and every table tiny (the opposite
    of the estimates at a million items), a search page has no hash join, whose build side would be every
    matching item or a whole table: it fetches the owners of the matches by primary key, walks the owners
    testing each one's items on the owners' item index (never the GIN index), or walks them testing each one
    against a hash of the matches read (bounded by the read's LIMIT), and reads the page's rows by primary key.
    Whether the walk goes first (the one choice the estimate makes) changes a LIMIT, not the plan."""
    name, statement, walk_index = _search_statements(walk_first)[case]
    async with db.connect() as conn:
        await admin_repository.plan_each_page(conn)
        plan = await admin_repository.explain(conn, statement)
        assert "Hash" not in plan, (name, plan)
        # With sequential scans priced out (the tables here are a page each), every step is on its index.
        await conn.execute(text("SET enable_seqscan = off"))
        plan = await admin_repository.explain(conn, statement)
    assert "Hash" not in plan, (name, plan)
    assert "Bitmap Index Scan on ix_item_search_vector" in plan, (name, plan)
    assert f"Index Scan using {walk_index} on item" in plan, (name, plan)
    assert "Seq Scan on item" not in plan and "Seq Scan on conversation" not in plan, (name, plan)
    # The matched owners are probed one by one by primary key, never tested against the array on a walk.
    assert "id = ANY" not in plan and "Index Scan using pk_" in plan, (name, plan)
    # Between the caps, a walk tests each row against the hash of the matches read, a subplan and not a join.
    # (PostgreSQL 15 prints it `COALESCE((hashed SubPlan 3), false)`, 17 and later `COALESCE((ANY (id = (hashed ...`;
    # on conversations, after the tests that leave out those being purged or deleted.)
    hashed = r"COALESCE\(\((ANY \(\w+ = \()?hashed SubPlan"
    deleted = r"\(\(purging_since IS NULL\) AND \(deleted_at IS NULL\) AND "
    assert re.search(rf"Filter: ({deleted})?{hashed}", plan), (name, plan)
    # The walk that may go first walks the list's index, then tests each row on its items.
    assert "_budget" in plan and plan.count(f"Index Scan using {walk_index} on item") >= 2, (name, plan)
