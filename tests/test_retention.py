"""Retention: per-tenant policies through the admin API, the dry-run preview, and the purge run, which deletes
exactly what the policy says and nothing a kept thread still needs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response
from tests.reliability_support import ServiceProcess, eventually, scalar
from tests.turn_support import MODEL, assistant, new_conversation, rows, turn, user


def _admin_client(url: str, key: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with _admin_client(server.url, server.settings.admin_api_key) as client:
        yield client


async def _age(db: AsyncEngine, table: str, ids: list[str], days: int) -> None:
    column = "updated_at" if table == "conversation" else "created_at"
    async with db.begin() as conn:
        await conn.execute(
            text(f"UPDATE {table} SET {column} = now() - make_interval(days => :d) WHERE id = ANY(:ids)"),
            {"d": days, "ids": ids},
        )


async def _ids(db: AsyncEngine, sql: str, **params: Any) -> set[str]:
    return {r["id"] for r in await rows(db, sql, **params)}


async def test_policy_is_set_read_and_validated_per_tenant(admin: httpx.AsyncClient, alice: Tenant) -> None:
    url = "/admin/tenants/alice/retention"
    assert (await admin.get(url)).json() == {
        "object": "retention_policy",
        "tenant": "alice",
        "responses_days": None,
        "conversations_idle_days": None,
        "source": "default",
    }
    answer = await admin.put(url, json={"responses_days": 30, "conversations_idle_days": None})
    assert answer.status_code == 200, answer.text
    assert (await admin.get(url)).json()["responses_days"] == 30
    assert (await admin.get(url)).json()["source"] == "tenant"

    bad = [
        ({"responses_days": 0, "conversations_idle_days": None}, "responses_days"),
        ({"responses_days": "30", "conversations_idle_days": None}, "responses_days"),
        ({"responses_days": True, "conversations_idle_days": None}, "responses_days"),
        ({"responses_days": 1.5, "conversations_idle_days": None}, "responses_days"),
        ({"responses_days": 30}, "conversations_idle_days"),
        ({"responses_days": 30, "conversations_idle_days": 2, "items_days": 3}, "items_days"),
    ]
    for body, param in bad:
        refused = await admin.put(url, json=body)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["param"] == param
    assert (await admin.get(url)).json()["responses_days"] == 30

    missing = await admin.get("/admin/tenants/nobody/retention")
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "tenant"
    assert (await alice.http.get(url)).status_code == 403

    reset = await admin.delete(url)
    assert reset.status_code == 200
    assert reset.json()["source"] == "default"
    assert (await admin.get(url)).json()["responses_days"] is None


async def test_run_deletes_exactly_what_the_policy_says_and_keeps_what_kept_threads_need(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    idle = await new_conversation(alice.http, items=[{"role": "user", "content": "seed"}])
    idle_turns = [await turn(alice.http, f"idle {n}", conversation=idle) for n in range(2)]
    active = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("active answer", msg_id="msg_active"))
    active_turn = await turn(alice.http, "active question", conversation=active)
    # A chain whose last response is recent: its old ancestors are its history.
    fake_upstream.reply_json(text_response("r1 answer", msg_id="msg_r1"))
    r1 = await turn(alice.http, "r1")
    fake_upstream.reply_json(text_response("r2 answer", msg_id="msg_r2"))
    r2 = await turn(alice.http, "r2", previous_response_id=r1["id"])
    fake_upstream.reply_json(text_response("r3 answer", msg_id="msg_r3"))
    r3 = await turn(alice.http, "r3", previous_response_id=r2["id"])
    s1 = await turn(alice.http, "s1")
    s2 = await turn(alice.http, "s2", previous_response_id=s1["id"])
    t1 = await turn(alice.http, "t1")
    u1 = await turn(alice.http, "u1")
    bobs = await turn(bob.http, "bob's old one")

    old = [t["id"] for t in (*idle_turns, active_turn, r1, r2, s1, s2, t1, bobs)]
    await _age(db, "response", old, 40)
    await _age(db, "conversation", [idle], 31)
    await _age(db, "conversation", [active], 29)

    policy = {"responses_days": 30, "conversations_idle_days": 30}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    before_items = len(await rows(db, "SELECT pk FROM item"))
    expected = {"responses": 5, "conversations": 1, "items": 11}
    preview = await admin.get("/admin/tenants/alice/retention/preview")
    assert preview.status_code == 200, preview.text
    assert preview.json() == {"object": "retention.preview", "tenant": "alice", **expected}
    # A preview deletes nothing.
    assert len(await rows(db, "SELECT pk FROM item")) == before_items

    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200, run.text
    result = run.json()
    assert {k: result[k] for k in ("responses", "conversations", "items")} == expected
    assert result["error"] is None

    assert len(await rows(db, "SELECT pk FROM item")) == before_items - 11
    assert await _ids(db, "SELECT id FROM conversation") == {active}
    kept = {active_turn["id"], r1["id"], r2["id"], r3["id"], u1["id"], bobs["id"]}
    assert await _ids(db, "SELECT id FROM response") == kept
    for gone in (s1, s2, t1, *idle_turns):
        assert (await alice.http.get(f"/v1/responses/{gone['id']}")).status_code == 404
    assert (await alice.http.get(f"/v1/conversations/{idle}")).status_code == 404
    zero = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (zero["responses"], zero["conversations"], zero["items"]) == (0, 0, 0)

    # Both kept threads continue with their whole history.
    fake_upstream.reply_json(text_response("r4 answer", msg_id="msg_r4"))
    await turn(alice.http, "r4", previous_response_id=r3["id"])
    assert fake_upstream.inputs[-1] == [
        user("r1"),
        assistant("r1 answer", "msg_r1"),
        user("r2"),
        assistant("r2 answer", "msg_r2"),
        user("r3"),
        assistant("r3 answer", "msg_r3"),
        user("r4"),
    ]
    await turn(alice.http, "again", conversation=active)
    assert fake_upstream.inputs[-1] == [
        user("active question"),
        assistant("active answer", "msg_active"),
        user("again"),
    ]
    state = (await admin.get("/admin/retention")).json()
    assert state["running"] is False
    assert state["last_run"]["items"] == 11
    metrics = (await admin.get("/metrics")).text
    deleted = re.search(r'^convstore_retention_deleted_total\{kind="items"\} (\S+)$', metrics, re.M)
    assert deleted is not None and float(deleted.group(1)) >= 11
    assert re.search(r'^convstore_retention_runs_total\{outcome="ok"\} ', metrics, re.M)


async def test_defaults_from_settings_apply_to_tenants_without_a_policy_in_small_batches(
    start_server: Callable[..., LiveServer],
    make_tenant: Any,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    live = start_server(retention_responses_days=30, retention_conversations_idle_days=10, retention_batch_size=7)
    carol = await make_tenant("carol", live=live)
    dave = await make_tenant("dave", live=live)
    big = await new_conversation(carol.http)
    for start in range(0, 40, 20):
        items = [{"role": "user", "content": f"m{n}"} for n in range(start, start + 20)]
        assert (await carol.http.post(f"/v1/conversations/{big}/items", json={"items": items})).status_code == 200
    old_turns = [await turn(carol.http, f"old {n}") for n in range(25)]
    daves = await turn(dave.http, "dave keeps")
    await _age(db, "response", [t["id"] for t in old_turns] + [daves["id"]], 31)
    await _age(db, "conversation", [big], 11)

    async with _admin_client(live.url, live.settings.admin_api_key) as admin:
        assert (await admin.get("/admin/tenants/carol/retention")).json()["responses_days"] == 30
        keep = {"responses_days": None, "conversations_idle_days": None}
        assert (await admin.put("/admin/tenants/dave/retention", json=keep)).status_code == 200
        preview = (await admin.get("/admin/tenants/carol/retention/preview")).json()
        assert (preview["conversations"], preview["responses"], preview["items"]) == (1, 25, 90)
        result = (await admin.post("/admin/retention/run")).json()
    assert (result["conversations"], result["responses"], result["items"]) == (1, 25, 90)
    assert await _ids(db, "SELECT id FROM response") == {daves["id"]}
    assert await _ids(db, "SELECT id FROM conversation") == set()


async def test_a_run_while_another_holds_the_lease_is_refused(admin: httpx.AsyncClient, db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO maintenance_lease (name, holder, expires_at) "
                "VALUES ('retention', 'purge_elsewhere', now() + interval '1 minute')"
            )
        )
    answer = await admin.post("/admin/retention/run")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "retention_running"
    assert (await admin.get("/admin/retention")).json()["running"] is True
    async with db.begin() as conn:
        await conn.execute(text("UPDATE maintenance_lease SET expires_at = now() - interval '1 second'"))
    assert (await admin.post("/admin/retention/run")).status_code == 200


async def test_keyed_store_false_answers_go_with_the_tenants_responses_of_their_age(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    # A store=false answer is kept only as its key's replay, linked to no stored row: no response deletion or
    # hard delete reaches it, so the responses policy does.
    async def keyed(tenant: Tenant, key: str, **fields: Any) -> dict[str, Any]:
        answer = await tenant.http.post(
            "/v1/responses", json={"model": MODEL, "input": key, **fields}, headers={"Idempotency-Key": key}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    await keyed(alice, "old-unstored", store=False)
    await keyed(alice, "new-unstored", store=False)
    stored = await keyed(alice, "old-stored")
    deferred = await keyed(alice, "old-deferred")
    await keyed(bob, "bobs-old-unstored", store=False)
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE idempotency_key SET created_at = now() - interval '3 days' WHERE key LIKE '%old%'")
        )
        # What a 503 answered while the database was down leaves until a replay settles it: the key names the
        # response stored later only as its answer's.
        await conn.execute(
            text(
                "UPDATE idempotency_key SET response_id = NULL, answer_response_id = :r, status_code = 503 "
                "WHERE key = 'old-deferred'"
            ),
            {"r": deferred["id"]},
        )
    assert (
        await admin.put("/admin/tenants/alice/retention", json={"responses_days": 2, "conversations_idle_days": None})
    ).status_code == 200
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200, run.text
    kept = {r["key"]: r["response_id"] for r in await rows(db, "SELECT key, response_id FROM idempotency_key")}
    # The stored response is 0 days old (only its key was aged): kept, and its key with it.
    assert kept == {"new-unstored": None, "old-stored": stored["id"], "old-deferred": None, "bobs-old-unstored": None}


async def test_an_old_response_a_plain_turn_is_continuing_is_kept_until_nothing_needs_it(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The turn stores nothing before its end, so its note as the old response's running child is what keeps the
    response: the preview and the run leave it, the turn's response is stored linked to it, and a run once the
    child is old too deletes both."""
    fake_upstream.reply_json(text_response("old answer", msg_id="msg_old"))
    old = await turn(alice.http, "old question")
    await _age(db, "response", [old["id"]], 40)
    assert (
        await admin.put("/admin/tenants/alice/retention", json={"responses_days": 30, "conversations_idle_days": None})
    ).status_code == 200
    fake_upstream.enqueue(Reply(kind="json", body=text_response("new answer", msg_id="msg_new"), delay=1.0))
    running = asyncio.create_task(
        alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": "new question", "previous_response_id": old["id"]}
        )
    )

    async def upstream_called() -> bool:
        return len(fake_upstream.requests) == 2

    await eventually(upstream_called)
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert preview["responses"] == 0, preview
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200 and run.json()["responses"] == 0, run.text
    answer = await running
    assert answer.status_code == 200, answer.text
    new = answer.json()["id"]
    assert await rows(db, "SELECT previous_response_id FROM response WHERE id = :r", r=new) == [
        {"previous_response_id": old["id"]}
    ]
    fake_upstream.reply_json(text_response("next", msg_id="msg_next"))
    await turn(alice.http, "next question", previous_response_id=new)
    assert fake_upstream.inputs[-1] == [
        user("old question"),
        assistant("old answer", "msg_old"),
        user("new question"),
        assistant("new answer", "msg_new"),
        user("next question"),
    ]
    await _age(db, "response", [r["id"] for r in await rows(db, "SELECT id FROM response")], 40)
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200 and run.json()["responses"] == 3, run.text
    assert await rows(db, "SELECT id FROM response") == []


async def _items_in(db: AsyncEngine, conversation: str) -> int:
    return int(await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation))


async def test_a_purge_killed_mid_conversation_leaves_it_deleted_and_the_next_run_finishes_it(
    server: LiveServer,
    admin: httpx.AsyncClient,
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    doomed_conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("carried answer", msg_id="msg_carried"))
    carried = await turn(alice.http, "carried question", conversation=doomed_conversation)
    for batch in range(15):
        items = [{"role": "user", "content": f"note {batch}.{n}"} for n in range(20)]
        added = await alice.http.post(f"/v1/conversations/{doomed_conversation}/items", json={"items": items})
        assert added.status_code == 200, added.text
    kept_conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "still here"}])
    await _age(db, "conversation", [doomed_conversation], 40)
    await _age(db, "response", [carried["id"]], 40)  # its thread is idle too
    policy = {"responses_days": None, "conversations_idle_days": 30}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    assert await _items_in(db, doomed_conversation) == 302

    # Two items a batch: the run takes 150 batches, each followed by a rest, and is killed in the middle.
    doomed = service_processes(
        RETENTION_BATCH_SIZE="2", ADMIN_API_KEY=server.settings.admin_api_key or "", PROCESS_HEARTBEAT_TIMEOUT="2"
    )
    async with _admin_client(doomed.url, server.settings.admin_api_key) as doomed_admin:
        running = asyncio.create_task(doomed_admin.post("/admin/retention/run"))

        async def half_emptied() -> bool:
            return 0 < await _items_in(db, doomed_conversation) < 250

        await eventually(half_emptied, timeout=20, every=0.01)
        doomed.kill()
        with pytest.raises(httpx.HTTPError):
            await running
    left = await _items_in(db, doomed_conversation)
    assert 0 < left < 302
    (marked,) = await rows(db, "SELECT purging_since FROM conversation WHERE id = :c", c=doomed_conversation)
    assert marked["purging_since"] is not None
    an_item_left = await scalar(db, "SELECT id FROM item WHERE conversation_id = :c LIMIT 1", c=doomed_conversation)

    # What is left of it is deleted for every API: no reads, no turns, no item changes, no listing.
    base = f"/v1/conversations/{doomed_conversation}"
    for answer in (
        await alice.http.get(base),
        await alice.http.get(f"{base}/items"),
        await alice.http.post(base, json={"metadata": {"a": "b"}}),
        await alice.http.post(f"{base}/items", json={"items": [{"role": "user", "content": "late"}]}),
        await alice.http.delete(base),
        await alice.http.get(f"{base}/export"),
        await alice.http.get(f"{base}/items/{an_item_left}"),
        await alice.http.post(f"{base}/fork", json={"item_id": an_item_left}),
        await alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": "hi", "conversation": doomed_conversation}
        ),
        await admin.get(f"/admin/conversations/{doomed_conversation}"),
    ):
        assert answer.status_code == 404, answer.text
    assert fake_upstream.requests[-1].body["input"][-1] == user("carried question")
    listed = (await admin.get("/admin/conversations", params={"tenant": "alice"})).json()["data"]
    assert [c["id"] for c in listed] == [kept_conversation]
    threads = (await admin.get("/admin/threads", params={"kind": "conversation"})).json()["data"]
    assert doomed_conversation not in [t["id"] for t in threads]
    assert await _items_in(db, doomed_conversation) == left

    # The dead run's lease is free once the heartbeat finds its process dead (not LEASE_SECONDS later), and the
    # next run finishes the conversation though the tenant's policy is gone.
    assert (await admin.delete("/admin/tenants/alice/retention")).status_code == 200

    async def lease_free() -> bool:
        return (await admin.get("/admin/retention")).json()["running"] is False

    await eventually(lease_free, timeout=30)
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200, run.text
    assert run.json()["conversations"] == 1 and run.json()["error"] is None
    assert await _ids(db, "SELECT id FROM conversation") == {kept_conversation}
    assert await _items_in(db, doomed_conversation) == 0
    # The turn's items stay with its response, as DELETE /v1/conversations/{id} leaves them.
    inputs = await alice.http.get(f"/v1/responses/{carried['id']}/input_items")
    assert inputs.status_code == 200, inputs.text
    assert [i["content"][0]["text"] for i in inputs.json()["data"]] == ["carried question"]
    assert (await alice.http.get(f"/v1/responses/{carried['id']}")).json()["output"][0]["id"] == "msg_carried"
    assert (await alice.http.get(f"/v1/conversations/{kept_conversation}/items")).json()["data"][0]["content"][0][
        "text"
    ] == "still here"


async def test_a_key_whose_response_retention_deleted_answers_404_and_does_not_run_the_turn_again(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """As after the tenant's own delete: with IDEMPOTENCY_KEY_TTL longer than the policy's days, the key was
    deleted with its response, and a retry ran the turn, and charged for it, again."""
    request = {"model": MODEL, "input": "keyed"}
    headers = {"Idempotency-Key": "kept-key"}
    fake_upstream.reply_json(text_response("Once."))
    first = await alice.http.post("/v1/responses", json=request, headers=headers)
    assert first.status_code == 200, first.text
    response_id = first.json()["id"]
    await _age(db, "response", [response_id], 10)
    async with db.begin() as conn:
        await conn.execute(text("UPDATE idempotency_key SET created_at = now() - interval '10 days'"))
    policy = {"responses_days": 5, "conversations_idle_days": None}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    for _ in range(2):  # the second run must leave the key too
        assert (await admin.post("/admin/retention/run")).status_code == 200
        assert await rows(db, "SELECT id FROM response") == []
        (key,) = await rows(db, "SELECT status_code, response_id, body FROM idempotency_key")
        assert (key["status_code"], key["response_id"]) == (404, None)
        assert b"keyed" not in key["body"] and b"Once." not in key["body"]
    again = await alice.http.post("/v1/responses", json=request, headers=headers)
    assert again.status_code == 404, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["error"]["message"] == f"Response with id '{response_id}' not found."
    assert len(fake_upstream.requests) == 1


async def test_a_conversation_whose_responses_a_recent_chain_continues_is_not_idle(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Chain turns (previous_response_id) continuing a conversation's response never touch the conversation's
    row. Its purge cut the history they replay: the next chain turn silently lost the conversation's turns."""
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "My name is Ada"}])
    fake_upstream.reply_json(text_response("Hello Ada", msg_id="msg_hello"))
    first = await turn(alice.http, "hi", conversation=conversation)
    fake_upstream.reply_json(text_response("Chained", msg_id="msg_chained"))
    chained = await turn(alice.http, "chained", previous_response_id=first["id"])
    await _age(db, "conversation", [conversation], 10)
    await _age(db, "response", [first["id"]], 10)
    policy = {"responses_days": None, "conversations_idle_days": 5}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert (preview["conversations"], preview["items"]) == (0, 0)
    assert (await admin.post("/admin/retention/run")).json()["conversations"] == 0
    fake_upstream.reply_json(text_response("Still Ada"))
    await turn(alice.http, "name?", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == [
        user("My name is Ada"),
        user("hi"),
        assistant("Hello Ada", "msg_hello"),
        user("chained"),
        assistant("Chained", "msg_chained"),
        user("name?"),
    ]
    # Once the whole thread is idle, the conversation goes.
    await _age(db, "response", [r["id"] for r in await rows(db, "SELECT id FROM response")], 10)
    assert (await admin.post("/admin/retention/run")).json()["conversations"] == 1
    assert await rows(db, "SELECT id FROM conversation") == []
    # Its responses stay (responses_days is null), but the history before them went with it: a turn continuing
    # one sent only what was left ("hi" and its answer, without "My name is Ada"). It is refused, as the response
    # itself or as an ancestor, on every kind of turn and for a count, and nothing is sent.
    calls = len(fake_upstream.requests)
    for response_id in (first["id"], chained["id"]):
        for extra in ({}, {"stream": True}, {"background": True}):
            body = {"model": MODEL, "input": "name?", "previous_response_id": response_id, **extra}
            refused = await alice.http.post("/v1/responses", json=body)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["param"]) == ("previous_response_not_usable", "previous_response_id")
            assert error["message"] == (
                f"Previous response '{response_id}' can no longer be continued: the conversation it belongs to "
                "was deleted, and with it the history before that response"
            )
        counted = await alice.http.post(
            "/v1/responses/input_tokens", json={"model": MODEL, "input": "x", "previous_response_id": response_id}
        )
        assert counted.status_code == 400 and counted.json()["error"]["code"] == "previous_response_not_usable"
    assert len(fake_upstream.requests) == calls
    # Nor is any of those turns left listed as running on the chain (the admin listing would show it in progress
    # until its claim expired), nor noted as a running child of the response it continued.
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []
    listed = await rows(db, "SELECT id FROM response_chain WHERE cardinality(turn_response_ids) > 0")
    assert listed == []
    assert (await alice.http.get(f"/v1/responses/{first['id']}")).status_code == 200
    # In no listed thread now, the kept responses name the one they were in, which an operator deletes whole.
    kept = (await admin.get("/admin/responses", params={"tenant": "alice"})).json()["data"]
    assert {r["id"]: r["thread_id"] for r in kept} == {r["id"]: conversation for r in kept}
    assert {first["id"], chained["id"]} <= {r["id"] for r in kept}
    # That thread is shown, as a deleted conversation whose figures are its kept responses'.
    shown = await admin.get(f"/admin/threads/{conversation}")
    assert shown.status_code == 200, shown.text
    thread = shown.json()
    assert (thread["id"], thread["kind"], thread["deleted"], thread["tenant"]) == (
        conversation,
        "conversation",
        True,
        "alice",
    )
    assert thread["response_count"] == len(kept)
    assert {r["id"] for r in thread["responses"]["data"]} == {r["id"] for r in kept}
    assert thread["item_count"] == await scalar(db, "SELECT count(*) FROM item WHERE thread_id = :t", t=conversation)
    assert thread["usage"]["input_tokens"] == sum(r["usage"]["input_tokens"] for r in kept)
    [newest] = await rows(
        db, "SELECT model, status FROM response WHERE thread_id = :t ORDER BY created_at DESC LIMIT 1", t=conversation
    )
    assert (thread["last_model"], thread["last_status"]) == (newest["model"], newest["status"])
    gone = await admin.delete(f"/admin/threads/{conversation}")
    assert gone.status_code == 200 and gone.json()["deleted_responses"] == len(kept)
    assert await rows(db, "SELECT id FROM response") == []
    assert (await admin.get(f"/admin/threads/{conversation}")).status_code == 404


async def test_a_conversation_a_plain_chain_turn_is_continuing_is_not_idle(
    admin: httpx.AsyncClient, alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Such a turn stores its response only at its end: a run while it waited for its answer purged the
    conversation, and the answer it then gave could never be continued (previous_response_not_usable)."""
    conversation = await new_conversation(alice.http, items=[{"role": "user", "content": "My secret is 42"}])
    fake_upstream.reply_json(text_response("Noted", msg_id="msg_noted"))
    first = await turn(alice.http, "remember it", conversation=conversation)
    await _age(db, "conversation", [conversation], 10)
    await _age(db, "response", [first["id"]], 10)
    policy = {"responses_days": None, "conversations_idle_days": 5}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    fake_upstream.enqueue(Reply(kind="json", body=text_response("It is 42", msg_id="msg_42"), delay=1.0))
    running = asyncio.create_task(
        alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": "my secret?", "previous_response_id": first["id"]}
        )
    )

    async def upstream_called() -> bool:
        return len(fake_upstream.requests) == 2

    await eventually(upstream_called)
    preview = (await admin.get("/admin/tenants/alice/retention/preview")).json()
    assert preview["conversations"] == 0, preview
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200 and run.json()["conversations"] == 0, run.text
    answer = await running
    assert answer.status_code == 200, answer.text
    fake_upstream.reply_json(text_response("Still 42"))
    await turn(alice.http, "again?", previous_response_id=answer.json()["id"])
    assert fake_upstream.inputs[-1][0] == user("My secret is 42")
