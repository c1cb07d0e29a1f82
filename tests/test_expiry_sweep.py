"""The expiry sweep (service/cluster/expiry.py): a claim held past its TURN_LOCK_TTL is freed and its turn failed
by one pass over the whole database, and the processes sharing that database take turns: one pass per interval
between them, not one each.

The claims here have no process listed anywhere, and no process has stopped, so the heartbeat's own search
(test_process_heartbeat.py) leaves them alone: only the sweep can free them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.expiry import JOB
from service.responses.turn import INTERRUPTED_ERROR
from tests.conftest import LiveServer, Tenant
from tests.stream_support import wait_until_ended
from tests.turn_support import MODEL, new_conversation, rows

TTL = 4.0  # TURN_LOCK_TTL of the instances under test: they sweep every second
INTERVAL = 1.0


async def _execute(db: AsyncEngine, sql: str, **params: Any) -> None:
    async with db.begin() as conn:
        await conn.execute(text(sql), params)


async def _turn_whose_claim_expired(tenant: Tenant, db: AsyncEngine) -> tuple[str, str]:
    """A conversation claimed by a background response stored as in_progress, its claim taken TTL + 1 s ago by a
    process that left no trace, as if its turn had hung."""
    conversation = await new_conversation(tenant.http)
    created = await tenant.http.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "conversation": conversation}
    )
    response_id = created.json()["id"]
    await wait_until_ended(tenant.http, response_id)
    await _execute(db, "UPDATE response SET status = 'in_progress', completed_at = NULL WHERE id = :r", r=response_id)
    await _execute(
        db,
        "UPDATE conversation SET turn_response_id = :r, turn_expires_at = now() - interval '1 second',"
        " turn_claimed_at = now() - make_interval(secs => :ttl + 1), last_status = 'completed' WHERE id = :c",
        r=response_id,
        c=conversation,
        ttl=TTL,
    )
    return conversation, response_id


async def _claim(db: AsyncEngine, conversation: str) -> dict[str, Any]:
    [claim] = await rows(
        db, "SELECT turn_response_id, turn_expires_at, last_status FROM conversation WHERE id = :c", c=conversation
    )
    return claim


async def _swept(db: AsyncEngine, conversation: str) -> bool:
    return (await _claim(db, conversation))["turn_response_id"] is None


async def _last_sweep(db: AsyncEngine) -> dict[str, Any] | None:
    found = await rows(db, "SELECT holder, last_run_at FROM maintenance_lease WHERE name = :job", job=JOB)
    return found[0] if found else None


async def _sweep_elsewhere_all_the_time(db: AsyncEngine) -> None:
    """Another process that sweeps every 0.1 s, recording its passes as the sweep does."""
    while True:
        await _execute(
            db,
            "INSERT INTO maintenance_lease (name, holder, last_run_at) VALUES (:job, 'proc_elsewhere', now())"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, last_run_at = excluded.last_run_at",
            job=JOB,
        )
        await asyncio.sleep(0.1)


async def test_a_process_leaves_the_sweep_to_another_that_swept_within_its_interval(
    alice: Tenant, start_server: Callable[..., LiveServer], db: AsyncEngine
) -> None:
    start_server(turn_lock_ttl=TTL)
    elsewhere = asyncio.create_task(_sweep_elsewhere_all_the_time(db))
    try:
        await asyncio.sleep(0.3)  # a pass the instance began before the first of those has ended
        conversation, response_id = await _turn_whose_claim_expired(alice, db)
        await asyncio.sleep(3 * INTERVAL)
        assert not await _swept(db, conversation)
        [response] = await rows(db, "SELECT status FROM response WHERE id = :r", r=response_id)
        assert response == {"status": "in_progress"}
    finally:
        elsewhere.cancel()

    # With nobody else sweeping, a live process takes its turn within an interval and frees the claim.
    deadline = asyncio.get_running_loop().time() + 5 * INTERVAL
    while not await _swept(db, conversation):
        assert asyncio.get_running_loop().time() < deadline, "the expired claim was never freed"
        await asyncio.sleep(0.05)
    claim = await _claim(db, conversation)
    assert claim["turn_expires_at"] is None and claim["last_status"] == "failed"
    [response] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response_id)
    assert response == {"status": "failed", "error": INTERRUPTED_ERROR}
    sweep = await _last_sweep(db)
    live_processes = {r["id"] for r in await rows(db, "SELECT id FROM service_process WHERE stopped_at IS NULL")}
    assert sweep is not None and sweep["holder"] in live_processes


async def test_processes_sharing_a_database_sweep_it_one_interval_apart(
    alice: Tenant, start_server: Callable[..., LiveServer], db: AsyncEngine
) -> None:
    start_server(turn_lock_ttl=TTL)
    await asyncio.sleep(INTERVAL / 3)  # without the turns, their passes would come a third of an interval apart
    start_server(turn_lock_ttl=TTL)
    conversation, _ = await _turn_whose_claim_expired(alice, db)

    passes: list[datetime] = []
    holders: set[str] = set()
    for _ in range(int(4 * INTERVAL / 0.05)):
        sweep = await _last_sweep(db)
        if sweep is not None and (not passes or sweep["last_run_at"] != passes[-1]):
            passes.append(sweep["last_run_at"])
            holders.add(sweep["holder"])
        await asyncio.sleep(0.05)

    assert len(passes) >= 3, passes
    gaps = [later - earlier for earlier, later in itertools.pairwise(passes)]
    assert all(gap >= timedelta(seconds=INTERVAL) for gap in gaps), gaps
    assert await _swept(db, conversation)
    live_processes = {r["id"] for r in await rows(db, "SELECT id FROM service_process WHERE stopped_at IS NULL")}
    assert holders <= live_processes, holders
