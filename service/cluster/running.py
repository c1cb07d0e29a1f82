"""The turns a process is running: every turn whose claim or in_progress response is in the database, from its
begin until its outcome is stored; and the Idempotency-Keys it holds for requests it is serving. The heartbeat
writes the turns to the process's row, and that list is what tells other processes that these turns are alive;
it also renews the deadlines of both, so that a turn outliving TURN_LOCK_TTL keeps them while its process lives
(service/cluster/heartbeat.py).

Kept per engine (one per application, so per service process), so that several applications in one OS
process (the tests) each list only their own turns.
"""

from __future__ import annotations

import weakref

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

# engine -> {response id: the conversation it claimed, if any}
_running: weakref.WeakKeyDictionary[Engine, dict[str, str | None]] = weakref.WeakKeyDictionary()
# engine -> {(tenant id, key): how many requests of this process hold it (a key is held by one at a time; counted
# so that a request letting go never drops another's)}
_keys: weakref.WeakKeyDictionary[Engine, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()


def add(engine: AsyncEngine, response_id: str, conversation_id: str | None) -> None:
    turns = _running.get(engine.sync_engine)
    if turns is None:
        turns = _running[engine.sync_engine] = {}
    turns[response_id] = conversation_id


def discard(engine: AsyncEngine, response_id: str) -> None:
    turns = _running.get(engine.sync_engine)
    if turns is not None:
        turns.pop(response_id, None)


def snapshot(engine: AsyncEngine) -> tuple[list[str], list[str]]:
    """The running responses, and the conversations they claimed."""
    turns = _running.get(engine.sync_engine, {})
    return list(turns), [c for c in turns.values() if c is not None]


def hold_key(engine: AsyncEngine, tenant_id: str, key: str) -> None:
    held = _keys.get(engine.sync_engine)
    if held is None:
        held = _keys[engine.sync_engine] = {}
    held[(tenant_id, key)] = held.get((tenant_id, key), 0) + 1


def let_go_key(engine: AsyncEngine, tenant_id: str, key: str) -> None:
    held = _keys.get(engine.sync_engine)
    if held is None or (tenant_id, key) not in held:
        return
    held[(tenant_id, key)] -= 1
    if held[(tenant_id, key)] <= 0:
        del held[(tenant_id, key)]


def held_keys(engine: AsyncEngine) -> list[tuple[str, str]]:
    """The (tenant id, key) pairs this process's requests hold."""
    return list(_keys.get(engine.sync_engine, {}))
