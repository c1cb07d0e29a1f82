"""A chain's totals while many turns finish in it at once: a finish never waits for the chain's row (every branch
of the chain adds to that one row). One that finds the row held marks its response pending; the next finish that
takes the row adds it, and the heartbeat's sweep adds those that no later finish took. The row is held here by the
test's own transaction, as a finish holds it until its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.reliability_support import eventually
from tests.stream_support import parse_sse
from tests.turn_support import MODEL, rows, turn

# The fake upstream reports 10 input and 5 output tokens and $0.00042 per turn; each turn stores two items.
_PER_TURN = {"items": 2, "input_tokens": 10, "output_tokens": 5, "cost": Decimal("0.00042")}


@asynccontextmanager
async def chain_row_held(db: AsyncEngine, chain_id: str) -> AsyncIterator[None]:
    async with db.connect() as conn:
        transaction = await conn.begin()
        await conn.execute(text("SELECT 1 FROM response_chain WHERE id = :c FOR UPDATE"), {"c": chain_id})
        try:
            yield
        finally:
            await transaction.rollback()


async def totals(db: AsyncEngine, chain_id: str) -> dict[str, Any]:
    [row] = await rows(
        db,
        "SELECT response_count, item_count, input_tokens, output_tokens, cost, last_status, turn_response_ids,"
        " turn_expires_at, updated_at FROM response_chain WHERE id = :c",
        c=chain_id,
    )
    return row


def counted(turns: int) -> dict[str, Any]:
    return {
        "response_count": turns,
        "item_count": turns * _PER_TURN["items"],
        "input_tokens": turns * _PER_TURN["input_tokens"],
        "output_tokens": turns * _PER_TURN["output_tokens"],
        "cost": turns * _PER_TURN["cost"],
    }


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in ("response_count", "item_count", "input_tokens", "output_tokens", "cost")}


async def pending(db: AsyncEngine) -> list[tuple[str, str]]:
    """The pending responses, each with the chain whose totals do not count it yet."""
    found = await rows(
        db, "SELECT id, pending_chain_id FROM response WHERE pending_chain_id IS NOT NULL ORDER BY created_at"
    )
    return [(row["id"], row["pending_chain_id"]) for row in found]


async def _streamed_turn(tenant: Tenant, previous: str) -> str:
    answer = await tenant.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "streamed branch", "previous_response_id": previous, "stream": True},
    )
    assert answer.status_code == 200, answer.text
    events = [event for _, event in parse_sse(answer.text)]
    assert events[-1]["type"] == "response.completed"
    response_id: str = events[-1]["response"]["id"]
    return response_id


async def _root_and_a_pending_branch(http: httpx.AsyncClient, db: AsyncEngine) -> tuple[dict[str, Any], dict[str, Any]]:
    """A chain's root and a branch whose finish found the chain's row held: the branch is left pending, out of
    the chain's totals."""
    root = await turn(http, "root")
    async with chain_row_held(db, root["id"]):
        branch = await asyncio.wait_for(turn(http, "branch", previous_response_id=root["id"]), 20)
        assert await pending(db) == [(branch["id"], root["id"])]
        assert numbers(await totals(db, root["id"])) == counted(1)
    return root, branch


async def test_a_finish_does_not_wait_for_its_chains_row_and_the_next_finish_adds_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    root = await turn(alice.http, "root")
    second = await turn(alice.http, "second", previous_response_id=root["id"])
    assert numbers(await totals(db, root["id"])) == counted(2)

    async with chain_row_held(db, root["id"]):
        # Both kinds of finish: a plain turn's (its response stored whole by its finish) and a streamed one's.
        plain = await asyncio.wait_for(turn(alice.http, "plain branch", previous_response_id=second["id"]), 20)
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Streamed.", chunks=2)))
        streamed = await asyncio.wait_for(_streamed_turn(alice, second["id"]), 20)
        assert await pending(db) == [(plain["id"], root["id"]), (streamed, root["id"])]
        assert numbers(await totals(db, root["id"])) == counted(2)

    last = await turn(alice.http, "after", previous_response_id=second["id"])
    row = await totals(db, root["id"])
    assert numbers(row) == counted(5)
    assert await pending(db) == []
    assert row["last_status"] == "completed" and row["turn_response_ids"] == [] and row["turn_expires_at"] is None
    assert row["updated_at"].isoformat() >= str(last["completed_at"])
    statuses = await rows(db, "SELECT status FROM response WHERE thread_id = :c", c=root["id"])
    assert [s["status"] for s in statuses] == ["completed"] * 5


async def test_the_heartbeat_adds_a_pending_turn_that_no_later_finish_took(
    start_server: Callable[..., LiveServer], make_tenant: Callable[..., Any], db: AsyncEngine
) -> None:
    live = start_server(process_heartbeat_timeout=0.5)
    tenant = await make_tenant("branching", live=live)
    root, _ = await _root_and_a_pending_branch(tenant.http, db)

    async def added() -> bool:
        return numbers(await totals(db, root["id"])) == counted(2)

    await eventually(added, timeout=10)
    row = await totals(db, root["id"])
    assert await pending(db) == []
    assert row["turn_response_ids"] == [] and row["turn_expires_at"] is None and row["last_status"] == "completed"


async def test_a_pending_turn_deleted_before_it_was_added_is_counted_first(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A deleted response is no longer there for a later finish or the sweep to add: the delete adds it first,
    as every deleted response of a chain stays counted in its totals."""
    root = await turn(alice.http, "root")
    async with chain_row_held(db, root["id"]):
        branch = await asyncio.wait_for(turn(alice.http, "branch", previous_response_id=root["id"]), 20)
        assert await pending(db) == [(branch["id"], root["id"])]
        # The delete waits for the chain's row, held here as a finish holds it until its commit.
        deleting = asyncio.create_task(alice.http.delete(f"/v1/responses/{branch['id']}"))
        await asyncio.sleep(0.3)
        assert not deleting.done()
    deleted = await asyncio.wait_for(deleting, 20)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": branch["id"], "object": "response", "deleted": True}
    assert await rows(db, "SELECT id FROM response WHERE id = :r", r=branch["id"]) == []
    assert numbers(await totals(db, root["id"])) == counted(2)
    assert await pending(db) == []


@pytest.mark.parametrize("kind", ["plain", "streamed"])
async def test_the_finish_that_takes_the_row_adds_the_pending_turns_it_saw(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    kind: str,
) -> None:
    """Both kinds of finish a client waits for (its response stored whole; stored with its event log) see the
    pending turns and add them once they have committed, before the answer ends. This server's sweep is minutes
    away; the suite's other server sweeps every few seconds, so a finish that did not add them passes here only
    when that sweep falls within the few milliseconds between the branch and the check. (A background turn's
    finish runs the same code, but its client learns of it by polling, which leaves that sweep time to run.)"""
    live = start_server(process_heartbeat_timeout=600)
    tenant = await make_tenant("folding", live=live)
    root, _ = await _root_and_a_pending_branch(tenant.http, db)
    if kind == "plain":
        await turn(tenant.http, "after", previous_response_id=root["id"])
    else:
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("Streamed.", chunks=2)))
        await _streamed_turn(tenant, root["id"])
    assert await pending(db) == []
    row = await totals(db, root["id"])
    assert numbers(row) == counted(3)
    assert row["turn_response_ids"] == [] and row["turn_expires_at"] is None and row["last_status"] == "completed"
