"""One writer per conversation: concurrent turns (in one process, across instances, across OS processes), items
added during a turn, reads during a turn, and a process killed mid-turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response
from tests.reliability_support import (
    ServiceProcess,
    a_request_waits_on_a_lock,
    assert_whole_turns,
    client_for,
    eventually,
    scalar,
)
from tests.test_observability import scrape, value
from tests.turn_support import MODEL, assistant, new_conversation, rows, user

RUNNING = ("queued", "in_progress")


async def timed_turn(client: httpx.AsyncClient, conversation: str, text_: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await client.post("/v1/responses", json={"model": MODEL, "input": text_, "conversation": conversation})
    return answer, time.monotonic() - started


def assert_one_winner(answers: list[httpx.Response]) -> httpx.Response:
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * (len(answers) - 1), [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "conversation_locked"
            assert answer.json()["error"]["param"] == "conversation"
    return next(a for a in answers if a.status_code == 200)


async def test_concurrent_turns_on_one_conversation_one_wins_the_rest_409_at_once(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Winner.", msg_id="msg_win"), delay=1.5))

    results = await asyncio.gather(*(timed_turn(alice.http, conversation, f"turn {n}") for n in range(8)))

    winner = assert_one_winner([answer for answer, _ in results])
    refused_after = [elapsed for answer, elapsed in results if answer.status_code == 409]
    assert max(refused_after) < 1.0, "a refused turn waited for the running one"
    assert len(fake_upstream.requests) == 1
    completed = await assert_whole_turns(db, conversation)
    assert [r["id"] for r in completed] == [winner.json()["id"]]
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 2
    assert await scalar(db, "SELECT count(*) FROM response") == 1
    state = await rows(db, "SELECT turn_response_id, item_count FROM conversation")
    assert state == [{"turn_response_id": None, "item_count": 2}]


async def test_items_and_deletes_during_a_turn_get_409_reads_are_not_blocked(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    added = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "context"}]},
    )
    item_id = added.json()["data"][0]["id"]
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Done."), delay=1.5))
    running = asyncio.create_task(timed_turn(alice.http, conversation, "question"))

    async def upstream_called() -> bool:
        return len(fake_upstream.requests) == 1

    await eventually(upstream_called)
    started = time.monotonic()
    more = await alice.http.post(
        f"/v1/conversations/{conversation}/items",
        json={"items": [{"type": "message", "role": "user", "content": "sneaky"}]},
    )
    removed = await alice.http.delete(f"/v1/conversations/{conversation}/items/{item_id}")
    listed = await alice.http.get(f"/v1/conversations/{conversation}/items")
    fetched = await alice.http.get(f"/v1/conversations/{conversation}")
    assert time.monotonic() - started < 1.0
    assert more.status_code == 409 and more.json()["error"]["code"] == "conversation_locked"
    assert removed.status_code == 409 and removed.json()["error"]["code"] == "conversation_locked"
    assert listed.status_code == 200 and len(listed.json()["data"]) == 1
    assert fetched.status_code == 200

    answer, _ = await running
    assert answer.status_code == 200
    await assert_whole_turns(db, conversation)
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 3


async def test_one_writer_across_instances_and_processes_on_one_database(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    start_server: Callable[..., LiveServer],
    service_processes: Callable[..., ServiceProcess],
) -> None:
    second = start_server()  # another instance: own event loop, engine and pool
    third = service_processes()  # another OS process
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Only one."), delay=1.5))
    clients = [alice.http, client_for(second.url, alice.key), client_for(third.url, alice.key)]
    try:
        turns = [timed_turn(clients[n % 3], conversation, f"turn {n}") for n in range(9)]
        results = await asyncio.gather(*turns)
        winner = assert_one_winner([answer for answer, _ in results])
        assert len(fake_upstream.requests) == 1
        # Then every instance takes its turn in sequence, each seeing the others' items.
        for client in clients:
            answer, _ = await timed_turn(client, conversation, "next")
            assert answer.status_code == 200, answer.text
    finally:
        for client in clients[1:]:
            await client.aclose()
    completed = await assert_whole_turns(db, conversation)
    assert completed[0]["id"] == winner.json()["id"]
    assert len(completed) == 4
    assert len(fake_upstream.requests[-1].body["input"]) == 7  # 3 earlier turns of 2 items + the new input


async def _turn_orphaned_by_a_killed_process(
    alice: Tenant, fake_upstream: FakeOpenRouter, doomed: ServiceProcess, *, background: bool
) -> str:
    """A conversation whose turn was in flight (upstream stalled) in a process killed with SIGKILL. A
    background turn's response is stored (in progress) when it is answered; a plain turn's, by its finish."""
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(kind="stall", delay=30))
    body = {"model": MODEL, "input": "never answered", "conversation": conversation, "background": background}
    async with client_for(doomed.url, alice.key) as client:
        in_flight = asyncio.create_task(client.post("/v1/responses", json=body))
        if background:
            accepted = await in_flight
            assert accepted.status_code == 200 and accepted.json()["status"] in RUNNING, accepted.text

        async def upstream_called() -> bool:
            return len(fake_upstream.requests) == 1

        await eventually(upstream_called)
        doomed.kill()
        if not background:
            with pytest.raises(httpx.HTTPError):
                await in_flight
    return conversation


@pytest.mark.parametrize("background", [False, True], ids=["plain", "background"])
async def test_process_killed_mid_turn_claim_expires_and_next_turn_takes_over(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    server: LiveServer,
    service_processes: Callable[..., ServiceProcess],
    background: bool,
) -> None:
    doomed = service_processes(TURN_LOCK_TTL="3", UPSTREAM_TOTAL_TIMEOUT="2.5")
    failed_before = value(await scrape(server), "convstore_turns_total", outcome="failed")
    conversation = await _turn_orphaned_by_a_killed_process(alice, fake_upstream, doomed, background=background)
    orphans = await rows(db, "SELECT id, status FROM response")
    assert [o["status"] in RUNNING for o in orphans] == ([True] if background else [])
    (holder,) = await rows(db, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conversation)
    assert holder["turn_response_id"] is not None

    blocked, _ = await timed_turn(alice.http, conversation, "too early")
    assert blocked.status_code == 409

    async def claim_expired() -> bool:
        # Expired, or already released by a live process's reaper, which frees it as soon as it expires (the
        # expiry is then NULL): either way the next turn finds the conversation free.
        return bool(
            await scalar(
                db, "SELECT coalesce(turn_expires_at < now(), true) FROM conversation WHERE id = :c", c=conversation
            )
        )

    await eventually(claim_expired, timeout=6)
    fake_upstream.reply_json(text_response("Back in business."))
    after, _ = await timed_turn(alice.http, conversation, "after expiry")
    assert after.status_code == 200, after.text
    others = await rows(db, "SELECT id, status, error FROM response WHERE id <> :r", r=after.json()["id"])
    if background:
        # The takeover fails the orphan's stored response.
        assert [(o["id"], o["status"], o["error"]["code"]) for o in others] == [
            (holder["turn_response_id"], "failed", "server_error")
        ]
    else:
        assert others == []
    completed = await assert_whole_turns(db, conversation)
    assert [r["id"] for r in completed] == [after.json()["id"]]
    # The orphan's failure is counted once (by the takeover, or by the sweep that freed the claim first): in its
    # conversation's responses when it stored one, and in the failed turns whether or not it did.
    count = await scalar(db, "SELECT response_count FROM conversation WHERE id = :c", c=conversation)
    assert count == (2 if background else 1)

    async def counted_once() -> bool:
        return value(await scrape(server), "convstore_turns_total", outcome="failed") == failed_before + 1

    await eventually(counted_once, timeout=5)
    await asyncio.sleep(1.5)  # a second count would come within a sweep's interval
    assert await counted_once()


@pytest.mark.parametrize("background", [False, True], ids=["plain", "background"])
async def test_process_killed_mid_turn_reaper_frees_the_claim_and_fails_any_stored_response(
    alice: Tenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    service_processes: Callable[..., ServiceProcess],
    background: bool,
) -> None:
    doomed = service_processes(TURN_LOCK_TTL="2", UPSTREAM_TOTAL_TIMEOUT="1.5")
    conversation = await _turn_orphaned_by_a_killed_process(alice, fake_upstream, doomed, background=background)
    start_server(turn_lock_ttl=2.0)  # its reaper runs every second

    async def reaped() -> bool:
        (state,) = await rows(
            db, "SELECT turn_response_id, last_status FROM conversation WHERE id = :c", c=conversation
        )
        statuses = [r["status"] for r in await rows(db, "SELECT status FROM response")]
        return state == {"turn_response_id": None, "last_status": "failed"} and statuses == (
            ["failed"] if background else []
        )

    await eventually(reaped, timeout=8)
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 0
    answer, _ = await timed_turn(alice.http, conversation, "fresh start")
    assert answer.status_code == 200
    await assert_whole_turns(db, conversation)


async def test_a_turn_that_waited_for_the_conversation_reads_the_items_committed_while_it_waited(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The begin statement reads the history from its snapshot, taken before it waited for the conversation's
    row lock: what the lock holder committed meanwhile is not in that snapshot and must still be sent."""
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("One.", msg_id="msg_one"))
    first = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q1", "conversation": conversation})
    assert first.status_code == 200, first.text
    late = '{"type":"message","role":"user","content":"added while the turn waited"}'
    fake_upstream.reply_json(text_response("Two.", msg_id="msg_two"))
    async with db.connect() as holder:
        # What adding an item does, held open: the conversation row stays locked until the commit below.
        position = await holder.scalar(
            text(
                "UPDATE conversation SET next_position = next_position + 1, item_count = item_count + 1 "
                "WHERE id = :id RETURNING next_position - 1"
            ),
            {"id": conversation},
        )
        await holder.execute(
            text(
                "INSERT INTO item (id, tenant_id, conversation_id, thread_id, position, type, role, status, body) "
                "SELECT 'msg_late', tenant_id, id, id, :position, 'message', 'user', 'completed', :body "
                "FROM conversation WHERE id = :id"
            ),
            {"id": conversation, "position": position, "body": late},
        )
        turn = asyncio.create_task(
            alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q2", "conversation": conversation})
        )

        await a_request_waits_on_a_lock(db)
        await holder.commit()
    answer = await turn
    assert answer.status_code == 200, answer.text

    assert fake_upstream.inputs[-1] == [
        user("Q1"),
        assistant("One.", "msg_one"),
        {"type": "message", "role": "user", "content": "added while the turn waited"},
        user("Q2"),
    ]
    stored = await rows(
        db, "SELECT position, id FROM item WHERE conversation_id = :id ORDER BY position", id=conversation
    )
    assert [r["position"] for r in stored] == [0, 1, 2, 3, 4]
    assert [r["id"] for r in stored][1:3] == ["msg_one", "msg_late"]


async def test_a_previous_response_deleted_while_the_turn_begins_is_a_400_not_a_500(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The previous response is read, then linked to by the insert, on separate connections: a delete that
    commits in between must give the same answer as a delete that came first."""
    fake_upstream.reply_json(text_response("One.", msg_id="msg_one"))
    first = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q1"})
    assert first.status_code == 200, first.text
    previous = first.json()["id"]
    async with db.connect() as deleter:
        # Deleted but not committed: the turn still reads the response, then its insert waits on the row.
        await deleter.execute(text("DELETE FROM response WHERE id = :id"), {"id": previous})
        turn = asyncio.create_task(
            alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q2", "previous_response_id": previous})
        )

        await a_request_waits_on_a_lock(db)
        await deleter.commit()
    answer = await turn
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == {
        "message": f"Previous response with id '{previous}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert len(fake_upstream.requests) == 1
    assert await rows(db, "SELECT id FROM response") == []
    assert await rows(db, "SELECT id FROM item") == []


async def test_a_finishing_turn_gets_the_next_free_connection_before_a_waiting_begin(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """With every connection busy, a turn whose answer is back is stored before a turn waiting to begin, even one
    that has waited longer: otherwise a burst of new turns keeps every finished one (its claim, its client and
    its stream) waiting behind them."""
    live = start_server(db_pool_size=1)
    tenant = await make_tenant("gate", live=live)
    answered, blocked, waiting = [await new_conversation(tenant.http) for _ in range(3)]
    fake_upstream.enqueue(
        Reply(kind="json", body=text_response("answered"), delay=1.0),
        Reply(kind="json", body=text_response("blocked")),
        Reply(kind="json", body=text_response("waiting")),
    )

    def start_turn(conversation: str) -> asyncio.Task[httpx.Response]:
        body = {"model": MODEL, "input": "Q", "conversation": conversation}
        return asyncio.create_task(tenant.http.post("/v1/responses", json=body))

    async with db.connect() as holder:
        await holder.execute(text("SELECT 1 FROM conversation WHERE id = :id FOR UPDATE"), {"id": blocked})
        first = start_turn(answered)  # begins at once, then waits 1 s on the upstream
        await eventually(lambda: _received(fake_upstream, 1))
        upstream_called = time.monotonic()
        second = start_turn(blocked)  # holds the only connection, waiting on the row lock
        await a_request_waits_on_a_lock(db)
        third = start_turn(waiting)  # waits for the connection to begin
        # The first turn's answer comes back meanwhile, and its finish waits for the connection too.
        await asyncio.sleep(max(0.0, upstream_called + 1.5 - time.monotonic()))
        assert not first.done()
        await holder.rollback()
    answers = [await task for task in (first, second, third)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]

    stored_first = await scalar(db, "SELECT updated_at FROM conversation WHERE id = :id", id=answered)
    began_third = await scalar(db, "SELECT created_at FROM response WHERE id = :id", id=answers[2].json()["id"])
    assert stored_first < began_third


async def _received(fake_upstream: FakeOpenRouter, count: int) -> bool:
    return len(fake_upstream.requests) >= count


async def _turn_outliving_its_claim(
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    answer: dict[str, Any],
) -> tuple[Tenant, str, asyncio.Task[tuple[httpx.Response, float]]]:
    """A turn whose upstream answers (`answer`) only after the turn's 1-second claim expired; returns once it
    expired, with the tenant, the conversation and the turn still running."""
    carol = await make_tenant("carol", live=start_server(turn_lock_ttl=1.0))
    conversation = await new_conversation(carol.http)
    fake_upstream.enqueue(Reply(kind="json", body=answer, delay=2.5))
    slow = asyncio.create_task(timed_turn(carol.http, conversation, "slow question"))

    async def claim_expired() -> bool:
        expired = "SELECT turn_expires_at IS NULL OR turn_expires_at < now() FROM conversation WHERE id = :c"
        return bool(fake_upstream.requests) and bool(await scalar(db, expired, c=conversation))

    await eventually(claim_expired, timeout=5)
    return carol, conversation, slow


async def test_a_turn_that_outlived_its_claim_is_stored_failed_with_its_items_outside_the_conversation(
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """Its answer comes back after another turn took the conversation over: appending it would interleave, so it
    is stored failed, and its input and output items with it, in no conversation."""
    late_answer = text_response("Too late.", msg_id="msg_late")
    carol, conversation, slow = await _turn_outliving_its_claim(
        make_tenant, start_server, fake_upstream, db, late_answer
    )
    fake_upstream.reply_json(text_response("On time.", msg_id="msg_on_time"))
    taken_over, _ = await timed_turn(carol.http, conversation, "next question")
    assert taken_over.status_code == 200, taken_over.text
    late, _ = await slow

    assert late.status_code == 200, late.text
    assert late.json()["status"] == "failed"
    assert "outlived its conversation claim" in late.json()["error"]["message"]
    [stored] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=late.json()["id"])
    assert stored["status"] == "failed" and stored["error"] == late.json()["error"]
    items = await rows(
        db,
        "SELECT id, is_output, ordinal, conversation_id, position FROM item WHERE response_id = :r ORDER BY pk",
        r=late.json()["id"],
    )
    assert [(i["is_output"], i["ordinal"], i["conversation_id"], i["position"]) for i in items] == [
        (False, 0, None, None),
        (True, 0, None, None),
    ]
    assert items[1]["id"] == "msg_late"
    inputs = (await carol.http.get(f"/v1/responses/{late.json()['id']}/input_items")).json()["data"]
    assert [item["content"][0]["text"] for item in inputs] == ["slow question"]
    completed = await assert_whole_turns(db, conversation)
    assert [r["id"] for r in completed] == [taken_over.json()["id"]]
    listed = (await carol.http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()
    assert [item["content"][0]["text"] for item in listed["data"]] == ["next question", "On time."]
    # Both turns are the conversation's, the failed one too (as a turn failed by whoever took it over is).
    counted = await scalar(db, "SELECT response_count FROM conversation WHERE id = :c", c=conversation)
    assert counted == 2


async def test_a_turn_whose_conversation_was_deleted_after_its_claim_expired_is_stored_in_none(
    make_tenant: Callable[..., Awaitable[Tenant]],
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """A turn no client sees before its end is stored by its finish. Once its claim expired, its conversation
    may be deleted; the late answer is then stored failed, in no conversation, rather than lost to a foreign
    key error."""
    late_answer = text_response("Nobody left.", msg_id="msg_gone")
    carol, conversation, slow = await _turn_outliving_its_claim(
        make_tenant, start_server, fake_upstream, db, late_answer
    )
    deleted = await carol.http.delete(f"/v1/conversations/{conversation}")
    assert deleted.status_code == 200, deleted.text
    late, _ = await slow

    assert late.status_code == 200, late.text
    assert late.json()["status"] == "failed"
    assert "outlived its conversation claim" in late.json()["error"]["message"]
    [stored] = await rows(db, "SELECT id, status, conversation_id FROM response")
    assert stored == {"id": late.json()["id"], "status": "failed", "conversation_id": None}
    items = await rows(db, "SELECT id, is_output, conversation_id FROM item ORDER BY pk")
    assert [(i["is_output"], i["conversation_id"]) for i in items] == [(False, None), (True, None)]
    assert items[1]["id"] == "msg_gone"
    shown = await carol.http.get(f"/v1/responses/{late.json()['id']}")
    assert shown.status_code == 200 and shown.json()["status"] == "failed"


async def test_a_request_postgresql_rolls_back_to_end_a_deadlock_is_told_to_retry_and_changed_nothing(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A deadlock is not the request's fault nor a fault of the service: PostgreSQL rolled one side back. That side
    answers 409 with Retry-After (which OpenAI's SDKs retry by themselves), not a 500, and the same request then
    succeeds."""
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(text_response("kept", msg_id="msg_kept"))
    answered = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation}
    )
    response_id = answered.json()["id"]
    async with db.connect() as holder:
        transaction = await holder.begin()
        # The service's side checks for the deadlock first (the server's 1 s), so it is the one rolled back.
        await holder.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        await holder.execute(
            text("SELECT pk FROM item WHERE response_id = :r ORDER BY pk LIMIT 1 FOR UPDATE"), {"r": response_id}
        )
        # The delete locks the conversation's row, then waits for that item...
        deleting = asyncio.create_task(alice.http.delete(f"/v1/responses/{response_id}"))
        await a_request_waits_on_a_lock(db)
        # ...and this waits for the conversation's row: each side waits for the other.
        await holder.execute(text("SELECT id FROM conversation WHERE id = :c FOR UPDATE"), {"c": conversation})
        refused = await deleting
        await transaction.rollback()
    assert refused.status_code == 409, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {
        "error": {
            "message": "Another request changed the same data at the same time; nothing was changed. Retry the request.",
            "type": "invalid_request_error",
            "param": None,
            "code": "concurrent_change",
        }
    }
    assert (await alice.http.get(f"/v1/responses/{response_id}")).status_code == 200
    assert len(await rows(db, "SELECT pk FROM item WHERE response_id = :r", r=response_id)) == 2
    assert (await alice.http.delete(f"/v1/responses/{response_id}")).status_code == 200
    assert await rows(db, "SELECT id FROM response WHERE id = :r", r=response_id) == []


async def test_a_finish_postgresql_rolls_back_to_end_a_deadlock_runs_again_and_stores_the_answer(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """By the time a turn's finish runs, the upstream answer is paid for. A deadlock that PostgreSQL ends by rolling
    the finish back changed nothing, so the finish runs again: the client gets the answer and it is stored, not
    a response stored as failed."""
    conversation = await new_conversation(alice.http)
    fake_upstream.enqueue(Reply(body=text_response("kept", msg_id="msg_kept"), delay=1.0))
    turn = asyncio.create_task(
        alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conversation})
    )
    await fake_upstream.received(1)
    [conversation_row] = await rows(db, "SELECT tenant_id FROM conversation WHERE id = :c", c=conversation)
    async with db.connect() as holder:
        transaction = await holder.begin()
        # The finish's side checks for the deadlock first (the server's 1 s), so it is the one rolled back.
        await holder.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        await holder.execute(
            text("SELECT id FROM tenant WHERE id = :t FOR UPDATE"), {"t": conversation_row["tenant_id"]}
        )
        # The finish locks the conversation's row, then checks its new response's tenant (a foreign key): it
        # waits for this transaction...
        await a_request_waits_on_a_lock(db)
        # ...and this waits for the conversation's row. It is granted once PostgreSQL has rolled the finish back.
        await holder.execute(text("SELECT id FROM conversation WHERE id = :c FOR UPDATE"), {"c": conversation})
        await transaction.rollback()
    answered = await turn
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"
    assert answered.json()["output"][0]["id"] == "msg_kept"
    [stored] = await rows(db, "SELECT status, error FROM response WHERE conversation_id = :c", c=conversation)
    assert stored == {"status": "completed", "error": None}
    items = await rows(db, "SELECT id, position FROM item WHERE conversation_id = :c ORDER BY position", c=conversation)
    assert [i["position"] for i in items] == [0, 1] and items[1]["id"] == "msg_kept"
    [counted] = await rows(
        db, "SELECT response_count, turn_response_id FROM conversation WHERE id = :c", c=conversation
    )
    assert counted == {"response_count": 1, "turn_response_id": None}
