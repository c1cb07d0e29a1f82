"""The turns a process is running: every turn whose claim or in_progress response is in the database, from its
begin until its outcome is stored. The heartbeat writes this list to the process's row, and that list is what
tells other processes that these turns are alive (service/cluster/heartbeat.py).

Kept per engine (one per application, so per service process), so that several applications in one OS
process (the tests) each list only their own turns.
"""

from __future__ import annotations

import weakref

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

# engine -> {response id: the conversation it claimed, if any}
_running: weakref.WeakKeyDictionary[Engine, dict[str, str | None]] = weakref.WeakKeyDictionary()


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
