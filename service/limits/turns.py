"""Turns in flight per tenant and per key, in this process: every kind counts (plain, streamed, background)
from admission until the turn is stored. A tenant's cap is also its share of the upstream connection pool
(UPSTREAM_TENANT_SHARE of UPSTREAM_MAX_CONNECTIONS), so one tenant at its cap leaves connections for the others.

A turn beyond a cap is refused at once (429 with Retry-After) rather than queued: a queue would hold the
client's connection and memory for a turn that has not started, which is what a flood is made of."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from service.errors import ServiceError


class TurnSlot:
    """One admitted turn. Released when the request ends, or, once handed to a run, when the run ends."""

    def __init__(self, gate: TurnGate, tenant_id: str, key_id: str | None) -> None:
        self._gate = gate
        self._tenant_id = tenant_id
        self._key_id = key_id
        self._released = False
        self._handed_over = False

    def release(self, _: Any = None) -> None:
        if not self._released:
            self._released = True
            self._gate.release(self._tenant_id, self._key_id)

    def hand_to(self, task: asyncio.Task[Any] | None) -> None:
        """The turn goes on in `task` (a streamed or background run): the slot is released when it ends."""
        if task is None:
            return
        self._handed_over = True
        task.add_done_callback(self.release)

    def __enter__(self) -> TurnSlot:
        return self

    def __exit__(self, *_: object) -> None:
        if not self._handed_over:
            self.release()


class TurnGate:
    def __init__(self, tenant_cap: int, key_cap: int) -> None:
        """A cap of 0 means no cap."""
        self.tenant_cap = tenant_cap
        self.key_cap = key_cap
        self._tenants: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()

    def in_flight(self, tenant_id: str) -> int:
        return self._tenants[tenant_id]

    def admit(self, tenant_id: str, key_id: str | None) -> TurnSlot:
        if self.tenant_cap and self._tenants[tenant_id] >= self.tenant_cap:
            raise too_many_turns("this tenant", self.tenant_cap)
        if key_id is not None and self.key_cap and self._keys[key_id] >= self.key_cap:
            raise too_many_turns("this API key", self.key_cap)
        self._tenants[tenant_id] += 1
        if key_id is not None:
            self._keys[key_id] += 1
        return TurnSlot(self, tenant_id, key_id)

    def release(self, tenant_id: str, key_id: str | None) -> None:
        _decrement(self._tenants, tenant_id)
        if key_id is not None:
            _decrement(self._keys, key_id)


def _decrement(counter: Counter[str], name: str) -> None:
    counter[name] -= 1
    if counter[name] <= 0:
        del counter[name]


def too_many_turns(whose: str, cap: int) -> ServiceError:
    return ServiceError(
        f"Too many turns in flight for {whose} (at most {cap} at a time here, streamed and background turns "
        "included); retry when one has finished",
        status_code=429,
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )
