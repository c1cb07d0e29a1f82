"""Trying a short database write again when it failed for a passing reason: the database was unavailable (a
restart, a failover, a dropped connection), or PostgreSQL rolled the write back to end a deadlock. The one place
that decides how often and how long to wait, at once and then in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.errors import is_database_unavailable, is_transient

logger = logging.getLogger("service.db")

T = TypeVar("T")


async def while_transient(
    work: Callable[[int], Awaitable[T]], *, attempts: int, what: str, log: logging.Logger = logger
) -> T:
    """`work(attempt)` (attempts count from 1), tried again after 0.2 s times the attempt while it fails for a
    passing reason (`is_transient`): its transaction was rolled back, so running it again is safe. Any other
    error, or the last attempt's, is raised. Each retry is logged on `log` (the caller's)."""
    for attempt in range(1, attempts + 1):
        try:
            return await work(attempt)
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            log.warning("%s failed (%s; attempt %d of %d), retrying", what, type(exc).__name__, attempt, attempts)
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("attempts must be at least 1")


class Later:
    """Writes that must not be lost to a database restart: tried a few times at once, then, while the database
    stays unavailable, kept in a background task of their own and tried again until it is back (first after a
    second, the wait doubling up to `max_delay`) for up to `seconds`. Its owner closes it at shutdown.

    `fallback` says, in the log, what happens to a write given up on (an unexpected error, or time ran out);
    `traceback` logs an unexpected error's traceback too (off where a database error's text could carry stored
    content)."""

    def __init__(
        self,
        *,
        seconds: float,
        max_delay: float,
        fallback: str,
        log: logging.Logger = logger,
        traceback: bool = False,
    ) -> None:
        self.seconds = seconds
        self._max_delay = max_delay
        self._fallback = fallback
        self._log = log
        self._traceback = traceback
        self._tasks: set[asyncio.Task[None]] = set()

    async def now_or_later(
        self,
        work: Callable[[int], Awaitable[None]],
        *,
        attempts: int,
        what: str,
        given_up: Callable[[], None] | None = None,
    ) -> bool:
        """`work(attempt)` tried `attempts` times at once (`while_transient`); True when done. While the database
        stays unavailable it is kept and tried again in the background (its attempts counting on), and False
        says so; `given_up` runs if the background tries end without it done. Any other error is raised, a
        deadlock that recurs on every attempt too: that is contention to report, not an outage to wait out."""
        try:
            await while_transient(work, attempts=attempts, what=what, log=self._log)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            task = asyncio.get_running_loop().create_task(self._until_back(work, attempts + 1, what, given_up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return False
        return True

    async def _until_back(
        self, work: Callable[[int], Awaitable[None]], attempt: int, what: str, given_up: Callable[[], None] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        delay = 1.0
        while loop.time() < deadline:
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
            try:
                await work(attempt)
            except Exception as exc:
                if not is_transient(exc):
                    self._log.error(
                        "%s failed later (%s); %s", what, type(exc).__name__, self._fallback, exc_info=self._traceback
                    )
                    break
                attempt += 1
                delay = min(delay * 2, self._max_delay)
            else:
                self._log.warning("%s: done after the database came back", what)
                return
        else:
            self._log.error("%s: the database was not back within %gs; %s", what, self.seconds, self._fallback)
        if given_up is not None:
            given_up()

    async def close(self, grace: float) -> int:
        """At shutdown: give the writes still waiting `grace` seconds more; returns how many were given up."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        return len(pending)
