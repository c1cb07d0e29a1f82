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

from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.expiry import JOB
from service.responses.turn import INTERRUPTED_ERROR
from tests.conftest import LiveServer, Tenant
from tests.reliability_support import claimed_by_a_lost_turn, execute
from tests.turn_support import rows

TTL = 4.0  # TURN_LOCK_TTL of the instances under test: they sweep every second
INTERVAL = 1.0


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
        await execute(
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
        conversation, response_id = await claimed_by_a_lost_turn(alice, db, ttl=TTL, age=TTL + 1)
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
    conversation, _ = await claimed_by_a_lost_turn(alice, db, ttl=TTL, age=TTL + 1)

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
