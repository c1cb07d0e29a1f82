"""A chain's status in /admin/threads while its turns run, and after the reapers failed them: as a conversation's.

A plain turn (neither streamed nor background) continuing a chain stores its response only when it ends; its begin
lists it on the chain's row (response_chain.turn_response_ids), which the listing reads as in_progress, its finish
takes it off, and the reapers (expired listing, stopped process) take it off and fail the chain's last status. A
stored running response (background, streamed) is failed by the same reapers, and its chain's last status with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response
from tests.turn_support import MODEL, rows, turn, user


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


async def chain_row(db: AsyncEngine, chain_id: str) -> dict[str, Any]:
    [row] = await rows(
        db,
        "SELECT turn_response_ids, turn_expires_at, last_status, response_count FROM response_chain WHERE id = :id",
        id=chain_id,
    )
    return row


async def listed(admin: httpx.AsyncClient, **params: Any) -> list[tuple[str, str]]:
    page = await admin.get("/admin/threads", params={"kind": "chain", **params})
    assert page.status_code == 200, page.text
    return [(row["id"], row["last_status"]) for row in page.json()["data"]]


async def until(condition: Callable[[], Any], what: str, tries: int = 300) -> None:
    for _ in range(tries):
        if await condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail(what)


async def test_a_plain_chain_turn_lists_its_chain_in_progress_while_it_runs(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine, fake_upstream: FakeOpenRouter
) -> None:
    root = await turn(alice.http, "start")
    assert await listed(admin) == [(root["id"], "completed")]
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow answer."), delay=1.5))
    running = asyncio.create_task(
        alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": "take your time", "previous_response_id": root["id"]}
        )
    )

    async def shown_running() -> bool:
        return await listed(admin, status="in_progress") == [(root["id"], "in_progress")]

    await until(shown_running, "the chain never listed as in_progress")
    assert await listed(admin, status="completed") == []
    assert await listed(admin) == [(root["id"], "in_progress")]
    detail = await admin.get(f"/admin/threads/{root['id']}")
    assert detail.json()["last_status"] == "in_progress"
    # Nothing of the turn is stored but its listing on the chain's row.
    marked = await chain_row(db, root["id"])
    assert len(marked["turn_response_ids"]) == 1 and marked["turn_expires_at"] is not None
    assert await rows(db, "SELECT id FROM response WHERE thread_id = :t", t=root["id"]) == [{"id": root["id"]}]
    refused = await admin.delete(f"/admin/threads/{root['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "thread_locked"

    finished = await running
    assert finished.status_code == 200, finished.text
    assert marked["turn_response_ids"] == [finished.json()["id"]]
    assert await listed(admin, status="in_progress") == []
    assert await listed(admin, status="completed") == [(root["id"], "completed")]
    after = await chain_row(db, root["id"])
    assert (after["turn_response_ids"], after["turn_expires_at"], after["response_count"]) == ([], None, 2)
    # The turn went upstream with the chain's history before its input.
    sent = fake_upstream.inputs[-1]
    assert [sent[0], sent[2]] == [user("start"), user("take your time")]
    assert sent[1]["id"] == root["output"][0]["id"] and len(sent) == 3


async def test_a_plain_chain_turn_that_fails_or_is_refused_leaves_no_listing(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine, fake_upstream: FakeOpenRouter
) -> None:
    root = await turn(alice.http, "start")
    fake_upstream.reply_json({"error": {"code": 400, "message": "bad request upstream"}}, status=400)
    failed = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "this fails", "previous_response_id": root["id"]}
    )
    assert failed.status_code == 400, failed.text
    row = await chain_row(db, root["id"])
    assert (row["turn_response_ids"], row["turn_expires_at"], row["last_status"]) == ([], None, "failed")
    assert await listed(admin) == [(root["id"], "failed")]
    # Continuing a failed response is refused before anything runs: nothing is listed.
    [stored_failure] = await rows(
        db, "SELECT id FROM response WHERE thread_id = :t AND status = 'failed'", t=root["id"]
    )
    refused = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "continue", "previous_response_id": stored_failure["id"]}
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "previous_response_not_usable"
    assert (await chain_row(db, root["id"]))["turn_response_ids"] == []
    # A turn that is not stored (store=false) is never listed.
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Unstored."), delay=0.5))
    unstored = asyncio.create_task(
        alice.http.post(
            "/v1/responses",
            json={"model": MODEL, "input": "unstored", "previous_response_id": root["id"], "store": False},
        )
    )
    await asyncio.sleep(0.25)
    assert (await chain_row(db, root["id"]))["turn_response_ids"] == []
    assert (await unstored).status_code == 200


async def test_a_plain_chain_turn_whose_listing_expired_fails_its_chain_once_reaped(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    admin: httpx.AsyncClient,
    db: AsyncEngine,
    fake_upstream: FakeOpenRouter,
) -> None:
    short_claims = start_server(turn_lock_ttl=1.0)
    carol = await make_tenant("carol", live=short_claims)
    root = await turn(carol.http, "start")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Too late."), delay=4.0))
    running = asyncio.create_task(
        carol.http.post(
            "/v1/responses",
            json={"model": MODEL, "input": "this will take a while", "previous_response_id": root["id"]},
        )
    )
    statuses: list[str] = []

    async def reaped() -> bool:
        statuses.append((await listed(admin))[0][1])
        return statuses[-1] == "failed"

    await until(reaped, "the chain's expired turn was never reaped", tries=150)
    assert "in_progress" in statuses, statuses
    row = await chain_row(db, root["id"])
    assert (row["turn_response_ids"], row["turn_expires_at"]) == ([], None)
    # The turn itself still ends and is stored; the chain then shows its outcome.
    assert (await running).status_code == 200
    assert await listed(admin) == [(root["id"], "completed")]


async def test_a_stale_background_chain_turn_fails_its_chain_once_reaped(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    admin: httpx.AsyncClient,
    db: AsyncEngine,
) -> None:
    """A stored running response whose process died (left as it would be) is failed by the TTL reaper, and its
    chain's last status with it."""
    dave = await make_tenant("dave")
    root = await turn(dave.http, "start")
    child = await turn(dave.http, "more", previous_response_id=root["id"])
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE response SET status = 'in_progress', completed_at = NULL,"
                " created_at = now() - interval '1000 seconds' WHERE id = :r"
            ),
            {"r": child["id"]},
        )
    assert await listed(admin) == [(root["id"], "in_progress")]
    # Its reaper runs every second; it takes claim-less responses for dead once they ran longer than the longest
    # TURN_LOCK_TTL of a live process (the suite's server: 960 s).
    start_server(turn_lock_ttl=1.0)

    async def reaped() -> bool:
        return await listed(admin) == [(root["id"], "failed")]

    await until(reaped, "the stale chain turn was never reaped")
    [stored] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=child["id"])
    assert stored["status"] == "failed" and stored["error"]["code"] == "server_error"
    assert (await chain_row(db, root["id"]))["last_status"] == "failed"


async def _dead_process(db: AsyncEngine, responses: list[str]) -> None:
    """A process that beat for the last time a minute ago, listing these turns."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO service_process (id, host, pid, heartbeat_at, heartbeat_timeout, running_responses,"
                " running_conversations) VALUES ('proc_dead', 'elsewhere', 1, now() - interval '60 seconds', 1,"
                " :responses, '{}')"
            ),
            {"responses": responses},
        )


async def test_a_dead_processs_chain_turns_fail_their_chains_within_the_heartbeat_timeout(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    admin: httpx.AsyncClient,
    db: AsyncEngine,
) -> None:
    """One chain with a plain turn of the dead process listed on its row (beside a live process's), one with a
    background turn it left in_progress: both chains end failed, and the live turn stays listed."""
    erin = await make_tenant("erin")
    plain_root = await turn(erin.http, "plain")
    stored_root = await turn(erin.http, "stored")
    child = await turn(erin.http, "more", previous_response_id=stored_root["id"])
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE response_chain SET turn_response_ids = ARRAY['resp_dead_plain', 'resp_live_plain'],"
                " turn_expires_at = now() + interval '1 hour' WHERE id = :c"
            ),
            {"c": plain_root["id"]},
        )
        await conn.execute(
            text("UPDATE response SET status = 'in_progress', completed_at = NULL WHERE id = :r"), {"r": child["id"]}
        )
    await _dead_process(db, ["resp_dead_plain", child["id"]])
    assert sorted(await listed(admin)) == sorted(
        [(plain_root["id"], "in_progress"), (stored_root["id"], "in_progress")]
    )
    start_server(process_heartbeat_timeout=1.0)  # its reaper finds the dead process at once

    async def reaped() -> bool:
        return (await chain_row(db, stored_root["id"]))["last_status"] == "failed" and (
            await chain_row(db, plain_root["id"])
        )["turn_response_ids"] == ["resp_live_plain"]

    await until(reaped, "the dead process's chain turns were never reaped")
    plain = await chain_row(db, plain_root["id"])
    assert plain["last_status"] == "failed" and plain["turn_expires_at"] is not None
    [stored] = await rows(db, "SELECT status FROM response WHERE id = :r", r=child["id"])
    assert stored["status"] == "failed"
    # The live turn keeps its chain in_progress; the other chain shows its failed turn.
    assert sorted(await listed(admin)) == sorted([(plain_root["id"], "in_progress"), (stored_root["id"], "failed")])


async def test_a_turn_listed_later_never_shortens_the_chains_expiry(
    alice: Tenant, db: AsyncEngine, fake_upstream: FakeOpenRouter
) -> None:
    """Processes sharing a database may run with different TURN_LOCK_TTL: a turn listed by one with a shorter TTL
    must not make the chain's running turns look expired (then failed, and deletable) before the longest's TTL."""
    root = await turn(alice.http, "start")
    body = {"model": MODEL, "input": "take your time", "previous_response_id": root["id"]}
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow answer."), delay=1.5))
    first = asyncio.create_task(alice.http.post("/v1/responses", json=body))

    async def listed_turns(count: int) -> bool:
        return len((await chain_row(db, root["id"]))["turn_response_ids"] or []) == count

    await until(lambda: listed_turns(1), "the first turn was never listed")
    async with db.begin() as conn:  # as a process whose TTL is a day listed it
        await conn.execute(
            text("UPDATE response_chain SET turn_expires_at = now() + interval '1 day' WHERE id = :id"),
            {"id": root["id"]},
        )
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow too."), delay=1.5))
    second = asyncio.create_task(alice.http.post("/v1/responses", json=body))
    await until(lambda: listed_turns(2), "the second turn was never listed")
    [row] = await rows(
        db,
        "SELECT turn_expires_at > now() + interval '23 hours' AS kept FROM response_chain WHERE id = :id",
        id=root["id"],
    )
    assert row["kept"] is True
    assert [(await first).status_code, (await second).status_code] == [200, 200]


async def test_a_plain_chain_turn_on_a_worker_that_reads_the_chain_is_listed_too(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    admin: httpx.AsyncClient,
    db: AsyncEngine,
    fake_upstream: FakeOpenRouter,
) -> None:
    """A worker that does not hold the chain's history reads the previous response with its ancestors: that
    statement lists the turn as well."""
    frank = await make_tenant("frank")
    root = await turn(frank.http, "start")
    other = await make_tenant("frank", live=start_server())
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow answer."), delay=1.0))
    running = asyncio.create_task(
        other.http.post("/v1/responses", json={"model": MODEL, "input": "again", "previous_response_id": root["id"]})
    )

    async def shown_running() -> bool:
        return await listed(admin) == [(root["id"], "in_progress")]

    await until(shown_running, "the chain never listed as in_progress")
    finished = await running
    assert finished.status_code == 200, finished.text
    assert await listed(admin) == [(root["id"], "completed")]
    assert (await chain_row(db, root["id"]))["turn_response_ids"] == []
    assert fake_upstream.inputs[-1][0] == user("start")
