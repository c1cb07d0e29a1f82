"""The purge job: applies every tenant's retention in short batches, one process at a time per database.

Whoever holds the `retention` lease (a row in PostgreSQL, renewed by every batch) runs; others skip the run.
Each batch is its own short transaction touching at most RETENTION_BATCH_SIZE items and a tenth of that in
conversations or responses, rows no turn is using (idle conversations, marked as being purged first; old
responses nothing builds on, locked with SKIP LOCKED), resting after each batch as long as it took, so that
turns are never queued behind the purge for long. A run first finishes the conversations an earlier run marked
and did not delete (its process died): they are deleted for every API from their mark on. Then the conversations
tenants deleted whose last needed response went while another transaction held their row (such a response's
delete never waits for that row: service/conversations/repository.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.ids import new_id
from service.observability.metrics import RETENTION_DELETED, RETENTION_RUNS
from service.retention import repository
from service.retention.policy import Policy, default_policy

logger = logging.getLogger("service.retention")

LEASE = "retention"
LEASE_SECONDS = 120
# After each batch the purge rests as long as the batch took (at least 5 ms), so it holds the database at most
# about half the time and turns arriving meanwhile find it free (figures: docs/benchmarks.md).
PAUSE_PER_BATCH_SECOND = 1.0
MIN_PAUSE = 0.005


async def _rest_after(started: float) -> None:
    await asyncio.sleep(max(MIN_PAUSE, (time.monotonic() - started) * PAUSE_PER_BATCH_SECOND))


class LeaseLost(Exception):
    """Another process took the lease (this one stalled past LEASE_SECONDS): stop, it carries on."""


@dataclass
class PurgeCounts:
    conversations: int = 0
    responses: int = 0
    items: int = 0

    def add(self, other: PurgeCounts) -> None:
        self.conversations += other.conversations
        self.responses += other.responses
        self.items += other.items


class _Run:
    def __init__(self, engine: AsyncEngine, settings: Settings, holder: str) -> None:
        self.engine = engine
        self.holder = holder
        self.items_per_batch = settings.retention_batch_size
        self.rows_per_batch = max(1, settings.retention_batch_size // 10)

    async def _renew(self, conn: Any) -> None:
        if not await repository.take_lease(conn, name=LEASE, holder=self.holder, ttl=LEASE_SECONDS):
            raise LeaseLost

    async def finish_marked(self, counts: PurgeCounts) -> None:
        """The conversations earlier runs marked and did not delete, whatever their tenant's policy is now."""
        while True:
            async with self.engine.begin() as conn:
                await self._renew(conn)
                ids = await repository.marked_conversations(conn, limit=self.rows_per_batch)
            if not ids:
                return
            if await self._empty_and_delete(ids, counts) == 0:
                return  # marked rows this run cannot delete: leave them to the next run rather than spin

    async def finish_deleted(self, counts: PurgeCounts) -> None:
        """The conversations tenants deleted that no response needs any more but were left (their row was held
        when their last response went), whatever their tenant's policy is."""
        previous: list[str] = []
        while True:
            started = time.monotonic()
            async with self.engine.begin() as conn:
                await self._renew(conn)
                ids, items = await repository.finish_deleted_conversations(conn, limit=self.rows_per_batch)
            counts.items += items
            if not ids or ids == previous:
                return  # none left, or only rows held elsewhere: the next run takes them
            previous = ids
            await _rest_after(started)

    async def conversations(self, tenant_id: str, idle_days: int, counts: PurgeCounts) -> None:
        while True:
            async with self.engine.begin() as conn:
                await self._renew(conn)
                ids = await repository.mark_idle_conversations(
                    conn, tenant_id=tenant_id, idle_days=idle_days, limit=self.rows_per_batch
                )
            if not ids:
                return
            await self._empty_and_delete(ids, counts)

    async def _empty_and_delete(self, ids: list[str], counts: PurgeCounts) -> int:
        """Remove the marked conversations' items batch by batch, then the conversations; how many went."""
        while True:
            started = time.monotonic()
            async with self.engine.begin() as conn:
                await self._renew(conn)
                deleted, detached = await repository.empty_marked_conversations(
                    conn, ids=ids, limit=self.items_per_batch
                )
            counts.items += deleted
            if deleted + detached == 0:
                break
            await _rest_after(started)
        started = time.monotonic()
        async with self.engine.begin() as conn:
            gone = await repository.delete_marked_conversations(conn, ids=ids)
        counts.conversations += gone
        await _rest_after(started)
        return gone

    async def responses(self, tenant_id: str, days: int, counts: PurgeCounts) -> None:
        while True:
            started = time.monotonic()
            async with self.engine.begin() as conn:
                await self._renew(conn)
                responses, items = await repository.delete_expired_responses(
                    conn, tenant_id=tenant_id, days=days, limit=self.rows_per_batch
                )
            counts.responses += responses
            counts.items += items
            if responses == 0:
                break
            await _rest_after(started)
        while True:
            started = time.monotonic()
            async with self.engine.begin() as conn:
                await self._renew(conn)
                answers = await repository.delete_unlinked_answers(
                    conn, tenant_id=tenant_id, days=days, limit=self.items_per_batch
                )
            if answers == 0:
                return
            await _rest_after(started)

    async def tenant(self, tenant_id: str, policy: Policy) -> PurgeCounts:
        counts = PurgeCounts()
        # Conversations first: the responses whose items they held are then no longer needed by them.
        if policy.conversations_idle_days is not None:
            await self.conversations(tenant_id, policy.conversations_idle_days, counts)
        if policy.responses_days is not None:
            await self.responses(tenant_id, policy.responses_days, counts)
        return counts


async def purge(engine: AsyncEngine, settings: Settings, *, process_id: str) -> dict[str, Any] | None:
    """Apply every tenant's retention now. None when another process holds the lease (its run is under way).
    `process_id`: this process's (service/cluster): once the heartbeat finds it stopped, its lease is free."""
    holder = f"{process_id}/{new_id('purge')}"
    try:
        async with engine.begin() as conn:
            taken = await repository.take_lease(conn, name=LEASE, holder=holder, ttl=LEASE_SECONDS)
    except Exception as exc:
        # A run that could not start (the database down) is a failed run too: an alert on failures must see it.
        RETENTION_RUNS.labels(type(exc).__name__).inc()
        raise
    if not taken:
        return None
    started = time.monotonic()
    run = _Run(engine, settings, holder)
    totals = PurgeCounts()
    tenants = 0
    error: str | None = None
    defaults = default_policy(settings)
    try:
        resumed = PurgeCounts()
        await run.finish_marked(resumed)
        totals.add(resumed)
        left_by_deletes = PurgeCounts()
        await run.finish_deleted(left_by_deletes)
        totals.add(left_by_deletes)
        if left_by_deletes.items:
            logger.info("retention removed %d items of conversations their tenants deleted", left_by_deletes.items)
        if resumed != PurgeCounts():
            logger.info(
                "retention finished %d conversations (%d items) an earlier run had started to delete",
                resumed.conversations,
                resumed.items,
            )
        async with engine.connect() as conn:
            rows = await repository.tenant_policies(conn, defaults_apply=defaults.deletes_anything)
        for row in rows:
            policy = Policy(row.responses_days, row.conversations_idle_days, "tenant") if row.has_policy else defaults
            counts = await run.tenant(row.id, policy)
            tenants += 1
            totals.add(counts)
            if counts != PurgeCounts():
                logger.info(
                    "retention purged tenant %s: %d conversations, %d responses, %d items",
                    row.name,
                    counts.conversations,
                    counts.responses,
                    counts.items,
                )
    except LeaseLost:
        error = "lease_lost"
        logger.warning("retention run stopped: another process took the lease")
    except Exception as exc:
        error = type(exc).__name__
        raise
    finally:
        RETENTION_RUNS.labels(error or "ok").inc()
        for kind, count in asdict(totals).items():
            RETENTION_DELETED.labels(kind).inc(count)
        result = {
            "object": "retention.run",
            **asdict(totals),
            "tenants": tenants,
            "seconds": round(time.monotonic() - started, 3),
            "error": error,
        }
        logger.info(
            "retention run: %d conversations, %d responses, %d items deleted over %d tenants in %.2f s",
            totals.conversations,
            totals.responses,
            totals.items,
            tenants,
            result["seconds"],
        )
        async with engine.begin() as conn:
            await repository.release_lease(conn, name=LEASE, holder=holder, result=result)
    return result
