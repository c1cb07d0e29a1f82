"""Trying a short database write again while the database is unavailable (a restart, a failover, a dropped
connection): the one place that decides how often and how long to wait."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.errors import is_database_unavailable

logger = logging.getLogger("service.db")

T = TypeVar("T")


async def while_unavailable(
    work: Callable[[int], Awaitable[T]], *, attempts: int, what: str, log: logging.Logger = logger
) -> T:
    """`work(attempt)` (attempts count from 1), tried again after 0.2 s times the attempt while the database is
    unavailable. Any other error, or the last attempt's, is raised. Each retry is logged on `log` (the caller's)."""
    for attempt in range(1, attempts + 1):
        try:
            return await work(attempt)
        except Exception as exc:
            if not is_database_unavailable(exc) or attempt == attempts:
                raise
            log.warning("%s failed (attempt %d of %d), retrying", what, attempt, attempts)
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("attempts must be at least 1")
