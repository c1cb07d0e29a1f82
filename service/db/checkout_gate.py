"""The queue in front of the pool for the turn loop's statements: as many holders as the pool has connections,
and a turn that is finishing goes before one that is beginning.

Under a burst (1,000 streams opened at once) the begins fill the queue first. In first-come order, a turn whose answer
is complete then waits behind every begin queued before its finish, holding its claim on the conversation, its client's
connection and its stream's state the whole time; in the capacity scenario that kept nearly every stream of the burst
alive at once, and their memory with them (docs/benchmarks.md). Finishing first bounds what is in
flight: a finish only ever follows a begin that already got through, so begins wait longer but are never starved.
"""

from __future__ import annotations

import asyncio
from collections import deque


class CheckoutGate:
    def __init__(self, size: int) -> None:
        self._free = size
        self._finishing: deque[asyncio.Future[None]] = deque()
        self._beginning: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a place if one is free and nobody waits (no wait, no timer)."""
        if self._free > 0 and not self._finishing and not self._beginning:
            self._free -= 1
            return True
        return False

    async def wait(self, *, finishing: bool) -> None:
        """Wait for a place, in line behind the finishing waiters (and, unless `finishing`, the beginning ones)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._finishing if finishing else self._beginning
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # given a place just as the wait was cancelled: hand it on
            elif waiter in queue:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the place to the next waiter, finishing turns first."""
        for queue in (self._finishing, self._beginning):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
