"""The database pool's connections in use and the turn statements waiting for one.

In use is read from the pools themselves rather than counted up and down: a checkout that fails (a connection
found closed) is checked in without having been checked out, and a count would drift. One process reads it
when scraped. With several workers each must write its value to the shared files, so it is read whenever a
connection is checked out or in (SQLAlchemy's pool events), and a scrape adds the workers up."""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool

from service.observability import metrics

_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _in_use() -> int:
    return sum(pool.checkedout() for pool in _pools)  # type: ignore[attr-defined]


def _checked_out(*_: Any) -> None:
    metrics.DB_POOL_IN_USE.set(_in_use())


def _checked_in(*_: Any) -> None:
    # The event comes before the pool takes the connection back: it is still counted.
    metrics.DB_POOL_IN_USE.set(max(0, _in_use() - 1))


def observe_pool(engine: AsyncEngine) -> None:
    pool = engine.sync_engine.pool
    _pools.add(pool)
    if not metrics.multiprocess_enabled():
        # Nothing per checkout: a turn checks out two or three connections, a scrape comes every few seconds.
        metrics.DB_POOL_IN_USE.set_function(_in_use)
        return
    event.listen(pool, "checkout", _checked_out)
    event.listen(pool, "checkin", _checked_in)


def waiting_for_connection() -> None:
    metrics.DB_POOL_WAITS.inc()
    metrics.DB_POOL_WAITING.inc()


def done_waiting() -> None:
    metrics.DB_POOL_WAITING.dec()
