"""Response chains' histories kept in the worker, so a `previous_response_id` turn reads none of its history.

An entry is the history a child of a response sends upstream: its ancestors' items, oldest first, then the
response's own input and output items, as stored JSON texts joined by commas. A turn's finish adds the entry
of the response it stored (its parent's entry and its own items: nothing is read), so a chain continued in the
same worker, linear or branching, never reads its history. A miss (another worker made the response, or it
was evicted) walks a few responses up to the nearest cached ancestor (turn_store.read_chain).

Items are never changed in place, so a chain's history changes only when one of its items is deleted. Every
statement that deletes items moves the tenant's `history_generation` on (a trigger); an entry records the
generation it was built at, and the begin reads the current one with the previous response, in the same
snapshot: an entry built before a delete is never served after it. Entries are also keyed by tenant: one is
served only to the tenant that stored the response.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChainHistory:
    tenant_id: str
    generation: int
    text: str
    # Each item's stored token count, in the same order (-1: stored before counts were kept).
    counts: array[int] = field(default_factory=lambda: array("q"))

    def size(self) -> int:
        return sys.getsizeof(self.text) + self.counts.itemsize * len(self.counts)


class ChainCache:
    """A per-worker LRU of response chain histories by response id, bounded by `max_bytes` (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, ChainHistory] = OrderedDict()
        self._bytes = 0

    def get(self, response_id: str, tenant_id: str, generation: int) -> ChainHistory | None:
        entry = self._entries.get(response_id)
        if entry is None or entry.tenant_id != tenant_id:
            return None
        if entry.generation != generation:
            self.discard(response_id)
            return None
        self._entries.move_to_end(response_id)
        return entry

    def holds(self, response_id: str) -> bool:
        """Whether an entry is kept for the response, current or not (the begin then skips the walk)."""
        return response_id in self._entries

    def put(self, response_id: str, entry: ChainHistory) -> None:
        self.discard(response_id)
        size = entry.size()
        if size > self._max_bytes:
            return
        self._entries[response_id] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size()

    def discard(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= entry.size()


def joined(*parts: str) -> str:
    return ",".join(part for part in parts if part)
