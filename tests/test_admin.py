"""The admin API: listing every tenant's threads (filters, search, keyset pages), one thread in full, hard
deletion, responses across tenants, usage statistics and API keys. Rows come from real turns through /v1."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.admin import repository, search
from service.admin.cursor import Keyset
from service.admin.params import ConversationFilters
from tests.conftest import TABLES, LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.stream_support import unpacked
from tests.turn_support import MODEL, new_conversation, rows


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


async def turn(tenant: Tenant, conversation_id: str, words: str, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "input": words, "conversation": conversation_id, **extra}
    return await tenant.http.post("/v1/responses", json=body)


async def walk(
    admin: httpx.AsyncClient,
    path: str,
    params: dict[str, Any],
    limit: int,
    between_pages: Callable[[], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Every row of a list, page by page, following next_cursor."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await admin.get(path, params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["data"]) <= limit
        rows.extend(body["data"])
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return rows
        cursor = body["next_cursor"]
        if between_pages is not None:
            await between_pages()


async def listed_ids(admin: httpx.AsyncClient, **params: Any) -> set[str]:
    return {row["id"] for row in await walk(admin, "/admin/conversations", params, 100)}


async def until_listed(admin: httpx.AsyncClient, status: str, conversation_id: str, what: str) -> None:
    """Poll the thread list until exactly `conversation_id` has `status` (up to ~4 s)."""
    for _ in range(200):
        if await listed_ids(admin, status=status) == {conversation_id}:
            return
        await asyncio.sleep(0.02)
    pytest.fail(what)


ADMIN_ROUTES = [
    ("GET", "/admin/conversations"),
    ("GET", "/admin/conversations/conv_x"),
    ("DELETE", "/admin/conversations/conv_x"),
    ("GET", "/admin/responses"),
    ("GET", "/admin/stats"),
    ("POST", "/admin/api-keys"),
    ("GET", "/admin/api-keys"),
    ("DELETE", "/admin/api-keys/key_x"),
]


async def test_tenant_keys_get_403_and_no_key_401_on_every_admin_route(
    alice: Tenant, anonymous: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    for method, path in ADMIN_ROUTES:
        denied = await alice.http.request(method, path, json={"tenant": "alice"} if method == "POST" else None)
        assert denied.status_code == 403, (method, path, denied.text)
        assert denied.json()["error"]["type"] == "permission_error"
        missing = await anonymous.request(method, path)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.json()["error"]["type"] == "authentication_error"
    # An admin key made by the CLI belongs to a tenant, and still sees every tenant.
    ops = await make_tenant("ops", admin=True)
    await new_conversation(alice.http)
    listed = await ops.http.get("/admin/conversations")
    assert listed.status_code == 200, listed.text
    assert [row["tenant"] for row in listed.json()["data"]] == ["alice"]


async def test_paging_returns_every_thread_exactly_once_while_threads_are_created(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, db: AsyncEngine
) -> None:
    existing: list[str] = []
    for index in range(24):
        existing.append(await new_conversation((alice if index % 2 else bob).http, metadata={"n": str(index)}))
    for index, conversation_id in enumerate(existing[:6]):
        assert (await turn(alice if index % 2 else bob, conversation_id, "hi")).is_success
    created_meanwhile: list[str] = []

    async def create_more() -> None:
        created_meanwhile.append(await new_conversation(alice.http))
        created_meanwhile.append(await new_conversation(bob.http))

    rows = await walk(admin, "/admin/conversations", {}, 5, between_pages=create_more)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a thread was listed twice"
    assert set(existing) <= set(ids), "a thread was skipped"
    assert set(ids) <= set(existing) | set(created_meanwhile)
    assert {row["tenant"] for row in rows} == {"alice", "bob"}
    activity = [row["last_activity_at"] for row in rows]
    assert activity == sorted(activity, reverse=True)
    # Newest activity first: the six threads with a turn were touched last.
    assert set(ids[:6]) == set(existing[:6])

    # Ties on the timestamp are broken by id: many threads with one updated_at still page exactly once.
    async with db.begin() as conn:
        await conn.execute(text("UPDATE conversation SET updated_at = '2030-01-01T00:00:00Z'"))
    everything = set(existing) | set(created_meanwhile)
    tied = [row["id"] for row in await walk(admin, "/admin/conversations", {}, 3)]
    assert len(tied) == len(everything) and set(tied) == everything
    assert tied == sorted(tied, reverse=True)


async def test_each_filter_and_the_search_narrow_the_listing(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    paris = await new_conversation(alice.http, metadata={"project": "apollo", "team": "red"})
    fake_upstream.reply_json(text_response("Paris is the capital.", model="anthropic/claude-sonnet-4"))
    assert (await turn(alice, paris, "What is the capital of France?")).is_success
    tokyo = await new_conversation(alice.http, metadata={"project": "apollo", "team": "blue"})
    fake_upstream.reply_json(text_response("Tokyo, of course."))
    assert (await turn(alice, tokyo, "Largest city in Japan?")).is_success
    broken = await new_conversation(bob.http, metadata={"project": "gemini"})
    fake_upstream.reply_json({"error": {"message": "Provider returned error", "code": 400}}, status=400)
    assert (await turn(bob, broken, "Summarise the quarterly report")).status_code == 400
    empty = await new_conversation(bob.http)
    everyone = {paris, tokyo, broken, empty}
    assert await listed_ids(admin) == everyone

    bob_id = (await admin.get("/admin/conversations", params={"tenant": "bob"})).json()["data"][0]["tenant_id"]
    assert await listed_ids(admin, tenant="alice") == {paris, tokyo}
    assert await listed_ids(admin, tenant=bob_id) == {broken, empty}
    assert await listed_ids(admin, model="anthropic/claude-sonnet-4") == {paris}
    assert await listed_ids(admin, model="openai/gpt-4o-mini") == {tokyo}
    assert await listed_ids(admin, status="failed") == {broken}
    assert await listed_ids(admin, status="completed") == {paris, tokyo}
    assert await listed_ids(admin, **{"metadata[project]": "apollo"}) == {paris, tokyo}
    assert await listed_ids(admin, **{"metadata[project]": "apollo", "metadata[team]": "blue"}) == {tokyo}
    assert await listed_ids(admin, **{"metadata[project]": "nope"}) == set()

    # Full-text search over user and assistant text, case-insensitive, with web-search syntax.
    assert await listed_ids(admin, q="FRANCE") == {paris}
    assert await listed_ids(admin, q="capital") == {paris}
    assert await listed_ids(admin, q="tokyo") == {tokyo}
    assert await listed_ids(admin, q='"capital of france"') == {paris}
    assert await listed_ids(admin, q="paris OR tokyo") == {paris, tokyo}
    # A thread matches when one of its items does: the only item saying France also says capital.
    assert await listed_ids(admin, q="france -capital") == set()
    assert await listed_ids(admin, q="berlin") == set()
    assert await listed_ids(admin, q="capital", tenant="bob") == set()
    # A failed turn appends nothing to its conversation, so its text is not the thread's.
    assert await listed_ids(admin, q="quarterly") == set()

    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE conversation SET created_at = '2020-01-01Z', updated_at = '2020-06-01Z' WHERE id = :id"),
            {"id": paris},
        )
    assert await listed_ids(admin, created_before="2021-01-01") == {paris}
    assert await listed_ids(admin, created_after="2021-01-01T00:00:00Z") == everyone - {paris}
    assert await listed_ids(admin, created_after="1577836800", created_before="1577836801") == {paris}
    assert await listed_ids(admin, updated_after="2020-06-01T00:00:00+00:00", updated_before="2020-06-02") == {paris}
    assert await listed_ids(admin, updated_before="2020-06-01T00:00:00Z") == set()  # before is exclusive

    row = (await admin.get("/admin/conversations", params={"q": "tokyo"})).json()["data"][0]
    assert row["title"] == "Largest city in Japan?"
    assert row["tenant"] == "alice" and row["metadata"] == {"project": "apollo", "team": "blue"}
    assert (row["item_count"], row["response_count"]) == (2, 1)
    assert (row["last_model"], row["last_status"]) == ("openai/gpt-4o-mini", "completed")
    assert row["usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost": 0.00042}


@pytest.mark.parametrize("crowd", [search.SEARCH_PROBE_CAP + 50, search.SEARCH_SCAN_CAP + 50])
async def test_search_for_a_word_in_more_items_than_the_index_read_cap_still_narrows(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, db: AsyncEngine, crowd: int
) -> None:
    """Past SEARCH_PROBE_CAP matching items the search walks conversations testing each against the matches
    read, past SEARCH_SCAN_CAP it walks them reading their items instead; same answers."""
    chatty = await new_conversation(alice.http)
    assert (await turn(alice, chatty, "ubiquitous zeta")).is_success
    crowded = await new_conversation(bob.http)
    quiet = await new_conversation(bob.http)
    assert (await turn(bob, quiet, "nothing to see")).is_success
    async with db.begin() as conn:
        tenant_id = await conn.scalar(text("SELECT tenant_id FROM conversation WHERE id = :id"), {"id": crowded})
        await conn.execute(
            text(
                "INSERT INTO item (id, tenant_id, conversation_id, thread_id, position, type, role, status, body, "
                "text_content) SELECT 'msg_many_' || g, :tenant, :conversation, :conversation, g, 'message', 'user', "
                "'completed', '{}', "
                "'a ubiquitous word' FROM generate_series(1, :n) g"
            ),
            {"tenant": tenant_id, "conversation": crowded, "n": crowd},
        )
    assert await listed_ids(admin, q="ubiquitous") == {chatty, crowded}
    assert [row["id"] for row in await walk(admin, "/admin/conversations", {"q": "ubiquitous"}, 1)] == [
        row["id"] for row in await walk(admin, "/admin/conversations", {}, 100) if row["id"] in {chatty, crowded}
    ]
    assert await listed_ids(admin, q="ubiquitous", tenant="alice") == {chatty}
    assert await listed_ids(admin, q="zeta") == {chatty}
    assert await listed_ids(admin, q="ubiquitous zeta") == {chatty}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "W10"}, "cursor"),
        ({"status": "done"}, "status"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-13-01"}, "created_before"),
        ({"updated_after": "1e400"}, "updated_after"),
        ({"updated_before": "99999999999999999"}, "updated_before"),
        ({"tenant": "nobody-by-that-name"}, "tenant"),
        ({"colour": "red"}, "colour"),
        ({"metadata[" + "k" * 65 + "]": "v"}, "metadata[" + "k" * 65 + "]"),
    ],
)
async def test_bad_parameters_get_400_naming_the_parameter(
    admin: httpx.AsyncClient, query: dict[str, str], param: str
) -> None:
    answer = await admin.get("/admin/conversations", params=query)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_cursor_of_another_list_or_a_repeated_parameter_is_rejected(
    admin: httpx.AsyncClient, alice: Tenant
) -> None:
    for _ in range(2):
        conversation_id = await new_conversation(alice.http)
        assert (await turn(alice, conversation_id, "hello")).is_success
    responses_cursor = (await admin.get("/admin/responses", params={"limit": 1})).json()["next_cursor"]
    wrong_list = await admin.get("/admin/conversations", params={"cursor": responses_cursor})
    assert wrong_list.status_code == 400 and wrong_list.json()["error"]["param"] == "cursor"
    repeated = await admin.get("/admin/conversations?status=failed&status=completed")
    assert repeated.status_code == 400 and repeated.json()["error"]["param"] == "status"
    for path, query in [
        ("/admin/responses", {"status": "stuck"}),
        ("/admin/responses", {"conversations": "misspelt"}),
        ("/admin/stats", {"created_after": "soon"}),
        ("/admin/conversations/" + conversation_id, {"order": "sideways"}),
    ]:
        answer = await admin.get(path, params=query)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["param"] == next(iter(query))


async def test_thread_detail_shows_items_page_and_responses_with_errors(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("One.", msg_id="msg_up_1"))
    first = (await turn(alice, conversation_id, "Count to one")).json()
    fake_upstream.reply_json({"error": {"message": "Rate limited upstream", "code": 400}}, status=400)
    assert (await turn(alice, conversation_id, "Now fail")).status_code == 400
    fake_upstream.reply_json(text_response("Two.", msg_id="msg_up_2"))
    assert (await turn(alice, conversation_id, "Count to two")).is_success

    detail = (await admin.get(f"/admin/conversations/{conversation_id}", params={"limit": 3})).json()
    assert detail["id"] == conversation_id and detail["tenant"] == "alice"
    assert (detail["item_count"], detail["response_count"], detail["last_status"]) == (4, 3, "completed")
    assert detail["title"] == "Count to one"
    items = detail["items"]
    assert [item["type"] for item in items["data"]] == ["message"] * 3 and items["has_more"] is True
    assert items["data"][1]["id"] == "msg_up_1"
    rest = (
        await admin.get(f"/admin/conversations/{conversation_id}", params={"after": items["last_id"], "limit": 3})
    ).json()["items"]
    assert [item["id"] for item in rest["data"]] == ["msg_up_2"] and rest["has_more"] is False

    responses = detail["responses"]["data"]
    assert [r["status"] for r in responses] == ["completed", "failed", "completed"]
    assert responses[2]["id"] == first["id"]
    assert responses[1]["error"]["message"] and responses[1]["usage"]["total_tokens"] == 0
    assert responses[0]["usage"] == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost": 0.00042}
    assert responses[0]["model"] == MODEL and responses[0]["upstream_model"] == "openai/gpt-4o-mini"

    missing = await admin.get("/admin/conversations/conv_does_not_exist")
    assert missing.status_code == 404


def _text_of(value: Any) -> str:
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        try:
            return unpacked(raw)  # a packed event log holds its text compressed
        except (zlib.error, UnicodeDecodeError, AssertionError):
            return raw.decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


async def rows_mentioning(db: AsyncEngine, needles: list[str]) -> list[tuple[str, str]]:
    """Every row of every test table (conftest.TABLES), as text, that contains one of the needles. Not the
    processes' heartbeat rows: they list the ids of the turns each process ran at its last heartbeat (no
    content), until the next one."""
    found = []
    async with db.connect() as conn:
        for table in (t for t in TABLES if t != "service_process"):
            for row in await conn.execute(text(f"SELECT * FROM {table}")):
                flat = " ".join(_text_of(value) for value in row)
                found.extend((table, needle) for needle in needles if needle in flat)
    return found


async def test_hard_delete_leaves_no_row_holding_the_thread(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine
) -> None:
    doomed = await new_conversation(alice.http, metadata={"case": "doomed-marker"})
    first = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "zebra-secret-one", "conversation": doomed},
        headers={"Idempotency-Key": "idem-doomed-1"},
    )
    assert first.is_success, first.text
    added = await alice.http.post(
        f"/v1/conversations/{doomed}/items",
        json={"items": [{"type": "message", "role": "user", "content": "zebra-secret-direct"}]},
    )
    assert added.status_code == 200, added.text
    second = await turn(alice, doomed, "zebra-secret-two")
    # A response chain built on one of its responses carries the thread's content too.
    chained = await alice.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "zebra-secret-chain", "previous_response_id": second.json()["id"]},
    )
    assert chained.is_success, chained.text
    kept = await new_conversation(alice.http, metadata={"case": "kept"})
    assert (await turn(alice, kept, "keep-this-one")).is_success

    async with db.connect() as conn:
        item_ids = list((await conn.scalars(text("SELECT id FROM item WHERE body LIKE '%zebra-secret%'"))).all())
    needles = [doomed, first.json()["id"], second.json()["id"], chained.json()["id"], "zebra-secret", "doomed-marker"]
    needles += item_ids
    assert await rows_mentioning(db, needles)  # the check can fail

    deleted = await admin.delete(f"/admin/conversations/{doomed}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "id": doomed,
        "object": "conversation.deleted",
        "deleted": True,
        "deleted_responses": 3,
    }
    assert await rows_mentioning(db, needles) == []
    assert (await alice.http.get(f"/v1/conversations/{doomed}")).status_code == 404
    assert (await alice.http.get(f"/v1/responses/{chained.json()['id']}")).status_code == 404
    assert (await admin.get(f"/admin/conversations/{doomed}")).status_code == 404
    assert (await admin.delete(f"/admin/conversations/{doomed}")).status_code == 404
    # The other thread is whole.
    assert await listed_ids(admin) == {kept}
    assert await rows_mentioning(db, ["keep-this-one"])


async def test_thread_with_a_turn_in_flight_lists_as_in_progress_and_is_not_deleted_under_it(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    conversation_id = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("Quick answer."))
    assert (await turn(alice, conversation_id, "first")).is_success
    assert await listed_ids(admin, status="completed") == {conversation_id}
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow answer."), delay=1.5))
    running = asyncio.create_task(turn(alice, conversation_id, "take your time"))
    await until_listed(admin, "in_progress", conversation_id, "the thread never listed as in_progress")
    # While the turn runs, the thread shows its status, not its last finished turn's.
    assert await listed_ids(admin, status="completed") == set()
    [listed] = (await admin.get("/admin/conversations")).json()["data"]
    assert listed["last_status"] == "in_progress"
    assert (await admin.get(f"/admin/conversations/{conversation_id}")).json()["last_status"] == "in_progress"
    # A turn no client sees before its end (neither streamed nor background) stores its response when it
    # finishes: the responses list shows it then. A background turn's is listed while it runs.
    assert (await admin.get("/admin/responses", params={"status": "in_progress"})).json()["data"] == []
    refused = await admin.delete(f"/admin/conversations/{conversation_id}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conversation_locked"
    finished = await running
    assert finished.is_success
    assert await listed_ids(admin, status="in_progress") == set()
    assert await listed_ids(admin, status="completed") == {conversation_id}
    done = (await admin.get("/admin/responses", params={"status": "completed"})).json()["data"]
    assert finished.json()["id"] in [r["id"] for r in done]

    # delay: between stream events (40 of them)
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Background answer.", chunks=40), delay=0.04))
    accepted = await turn(alice, conversation_id, "in the background", background=True)
    assert accepted.status_code == 200, accepted.text
    await until_listed(admin, "in_progress", conversation_id, "the thread never listed as in_progress in background")
    stuck = (await admin.get("/admin/responses", params={"status": "in_progress"})).json()["data"]
    assert [(r["id"], r["conversation_id"]) for r in stuck] == [(accepted.json()["id"], conversation_id)]
    await until_listed(admin, "completed", conversation_id, "the background turn never finished")
    assert (await admin.delete(f"/admin/conversations/{conversation_id}")).status_code == 200


async def test_thread_whose_turn_outlived_its_claim_lists_as_failed_once_reaped(
    admin: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
) -> None:
    short_claims = start_server(turn_lock_ttl=1.0)
    carol = await make_tenant("carol", live=short_claims)
    conversation_id = await new_conversation(carol.http)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Too late."), delay=4.0))
    running = asyncio.create_task(turn(carol, conversation_id, "this will take a while"))
    statuses = []
    for _ in range(150):
        rows = (await admin.get("/admin/conversations")).json()["data"]
        statuses.append(rows[0]["last_status"] if rows else None)
        if statuses[-1] == "failed":
            break
        await asyncio.sleep(0.05)
    assert "in_progress" in statuses and statuses[-1] == "failed", statuses
    await running
    assert await listed_ids(admin, status="failed") == {conversation_id}


async def test_responses_listing_filters_and_pages_across_tenants(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    alice_thread = await new_conversation(alice.http)
    for index in range(5):
        assert (await turn(alice, alice_thread, f"question {index}")).is_success
    bob_thread = await new_conversation(bob.http)
    fake_upstream.reply_json(text_response("Different model.", model="meta-llama/llama-3-70b"))
    assert (await turn(bob, bob_thread, "hello")).is_success
    fake_upstream.reply_json({"error": {"message": "nope", "code": 400}}, status=400)
    assert (await turn(bob, bob_thread, "fail please")).status_code == 400
    alone = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "no conversation"})
    assert alone.is_success

    every = await walk(admin, "/admin/responses", {}, 2)
    assert len(every) == len({r["id"] for r in every}) == 8
    assert [r["created_at"] for r in every] == sorted((r["created_at"] for r in every), reverse=True)
    # Each turn's latency, to the millisecond its timestamps hold (created_at and completed_at are whole seconds).
    stored = await rows(
        db, "SELECT id, floor(extract(epoch FROM completed_at - created_at) * 1000) AS ms FROM response"
    )
    assert {r["id"]: r["duration_ms"] for r in every} == {r["id"]: int(r["ms"]) for r in stored}

    async def ids(**params: Any) -> set[str]:
        return {r["id"] for r in await walk(admin, "/admin/responses", params, 100)}

    failed = await ids(status="failed")
    assert len(failed) == 1 and (await ids(tenant="bob", status="failed")) == failed
    assert len(await ids(tenant="alice")) == 6
    assert len(await ids(conversation=alice_thread)) == 5
    assert len(await ids(model="meta-llama/llama-3-70b")) == 1
    # A failed turn never reached a model: it is listed under the model it asked for.
    assert (await ids(model=MODEL)) == failed
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE response SET created_at = '2020-01-01Z' WHERE id = :id"), {"id": alone.json()["id"]}
        )
    assert await ids(created_before="2021-01-01") == {alone.json()["id"]}
    assert len(await ids(created_after="2021-01-01")) == 7


async def test_stats_count_and_sum_usage_per_tenant_and_per_model(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    for tenant, count in ((alice, 3), (bob, 1)):
        conversation_id = await new_conversation(tenant.http)
        for _ in range(count):
            assert (await turn(tenant, conversation_id, "hello")).is_success
    await new_conversation(bob.http)
    fake_upstream.reply_json({"error": {"message": "nope", "code": 400}}, status=400)
    assert (await turn(bob, conversation_id, "fail")).status_code == 400

    stats = (await admin.get("/admin/stats")).json()
    tenants = {t["tenant"]: t for t in stats["tenants"]}
    assert tenants["alice"]["responses"] == 3 and tenants["alice"]["conversations"] == 1
    assert tenants["alice"]["usage"] == {"input_tokens": 30, "output_tokens": 15, "total_tokens": 45, "cost": 0.00126}
    assert tenants["bob"]["conversations"] == 2
    assert tenants["bob"]["by_status"]["failed"] == 1 and tenants["bob"]["by_status"]["completed"] == 1
    models = {m["model"]: m for m in stats["models"]}
    assert models["openai/gpt-4o-mini"]["responses"] == 4 and models[MODEL]["responses"] == 1
    assert stats["total"]["responses"] == 5 and stats["total"]["conversations"] == 3
    assert stats["total"]["usage"]["input_tokens"] == 40

    future = (await admin.get("/admin/stats", params={"created_after": "2100-01-01"})).json()
    assert future["tenants"] == [] and future["models"] == [] and future["total"]["responses"] == 0


async def test_a_tenant_name_the_admin_paths_could_not_carry_is_refused(
    admin: httpx.AsyncClient, db: AsyncEngine
) -> None:
    """Such a tenant got a working key, then no /admin/tenants/{tenant}/… route could reach it (its retention,
    webhooks, imports)."""
    for bad in ("team/x", "..", ".", "tab\there", "bell\x07"):
        refused = await admin.post("/admin/api-keys", json={"tenant": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["param"] == "tenant"
    assert await rows(db, "SELECT name FROM tenant") == []
    created = await admin.post("/admin/api-keys", json={"tenant": "team.x-1 (EU)"})
    assert created.status_code == 200, created.text
    reached = await admin.get("/admin/tenants/team.x-1 (EU)/retention")
    assert reached.status_code == 200, reached.text
    # A tenant named so before the check keeps its name and gets keys (its exports import as they did).
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO tenant (id, name) VALUES ('ten_old_slash', 'old/team')"))
    kept = await admin.post("/admin/api-keys", json={"tenant": "old/team"})
    assert kept.status_code == 200 and kept.json()["tenant"] == "old/team", kept.text


async def test_keys_created_through_the_api_work_on_v1_until_revoked(
    admin: httpx.AsyncClient, server: LiveServer, db: AsyncEngine
) -> None:
    created = await admin.post("/admin/api-keys", json={"tenant": "carol", "name": "ci"})
    assert created.status_code == 200, created.text
    body = created.json()
    secret = body["key"]
    assert body["tenant"] == "carol" and body["name"] == "ci" and body["admin"] is False
    assert secret.startswith(body["prefix"])
    async with db.connect() as conn:
        stored = " ".join(str(v) for v in (await conn.execute(text("SELECT * FROM api_key"))).one())
    assert secret not in stored

    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as carol:
        made = await carol.post("/v1/conversations", json={})
        assert made.status_code == 200, made.text
        assert (await carol.get("/admin/conversations")).status_code == 403
        assert [row["tenant"] for row in (await admin.get("/admin/conversations")).json()["data"]] == ["carol"]

        listing = await admin.get("/admin/api-keys")
        assert secret not in listing.text and "key" not in listing.json()["data"][0]
        assert [k["id"] for k in listing.json()["data"]] == [body["id"]]
        assert listing.json()["data"][0]["last_used_at"] is not None

        revoked = await admin.delete(f"/admin/api-keys/{body['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        # At once, despite the authenticator's cache.
        assert (await carol.get(f"/v1/conversations/{made.json()['id']}")).status_code == 401
        again = await admin.delete(f"/admin/api-keys/{body['id']}")
        assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
        listed = (await admin.get("/admin/api-keys", params={"tenant": "carol"})).json()["data"]
        assert listed[0]["revoked_at"] == revoked.json()["revoked_at"]
        tenant_id = (await admin.get("/admin/conversations")).json()["data"][0]["tenant_id"]
        by_id = (await admin.get("/admin/api-keys", params={"tenant": tenant_id})).json()["data"]
        assert [k["id"] for k in by_id] == [body["id"]]
        # An unknown tenant is an error, as on every other admin listing, not an empty page.
        for route in ("/admin/api-keys", "/admin/conversations", "/admin/responses", "/admin/threads"):
            unknown = await admin.get(route, params={"tenant": "nobody"})
            assert unknown.status_code == 400, (route, unknown.text)
            assert unknown.json()["error"]["code"] == "unknown_tenant" and unknown.json()["error"]["param"] == "tenant"

    boss = (await admin.post("/admin/api-keys", json={"tenant": "ops", "admin": True})).json()
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {boss['key']}"}, timeout=30
    ) as ops:
        assert (await ops.get("/admin/conversations")).status_code == 200
    assert (await admin.delete("/admin/api-keys/key_unknown")).status_code == 404
    for bad, param in [({}, "tenant"), ({"tenant": " "}, "tenant"), ({"tenant": "x", "admin": "yes"}, "admin")]:
        refused = await admin.post("/admin/api-keys", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    refused = await admin.post("/admin/api-keys", json={"tenant": "x", "secret": "chosen"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "secret"


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        (ConversationFilters(), "ix_conversation_updated_at_id"),
        (ConversationFilters(tenant="t"), "ix_conversation_tenant_id_updated_at_id"),
        (ConversationFilters(model="m"), "ix_conversation_last_model_updated_at_id"),
        (ConversationFilters(status="failed"), "ix_conversation_last_status_updated_at_id"),
        (ConversationFilters(updated_after=datetime(2026, 1, 1, tzinfo=UTC)), "ix_conversation_updated_at_id"),
        (ConversationFilters(created_after=datetime(2026, 1, 1, tzinfo=UTC)), "ix_conversation_"),
        (ConversationFilters(metadata={"k": "v"}), "ix_conversation_"),
        (ConversationFilters(q="word"), "ix_item_search_vector"),
    ],
)
async def test_every_listing_filter_has_an_index_path_without_offset(
    db: AsyncEngine, filters: ConversationFilters, index: str
) -> None:
    """The plans at a million items are printed by bench/admin_listing.py; here, with sequential scans priced
    out, each filter must still be answerable from an index, and a page is a LIMIT, never an OFFSET."""
    keyset = Keyset(limit=20, after=(datetime(2030, 1, 1, tzinfo=UTC), "conv_z"))
    statement = repository.conversation_pages.bound(filters, "t" if filters.tenant else None, keyset)
    assert "OFFSET" not in str(statement.compile(db.sync_engine)).upper()
    async with db.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        plan = await repository.explain(conn, statement)
    assert "Seq Scan on conversation" not in plan and "Seq Scan on item" not in plan, plan
    assert index in plan, plan
