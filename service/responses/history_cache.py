"""Long conversation histories kept in the worker between turns, so a turn reads only the items added since.

Reading a long history whole costs the begin statement time that grows with every turn; reading the items at
and after a known position costs a small, constant part of it (docs/benchmarks.md). An entry is
the history text as of a conversation state `(next_position, item_count)`. It stays correct without any
invalidation message, because of two facts the schema guarantees: positions are handed out from
next_position, so no item ever appears below an entry's next_position; and an item's stored text never
changes. The only change below an entry's end is therefore a deletion, which the count gives away: the entry
is still the prefix exactly when `entry.item_count + items read from entry.next_position` equals the
conversation's item_count. A stale entry (another worker ran the last turns) is still a valid prefix; the
turn reads a few more items.

Short histories are not kept: under MIN_BYTES the full read costs little more than the tail, not worth the
memory. Entries are evicted least recently used beyond the byte budget.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

# A history of some 100 items of a couple of hundred bytes each. Below it, reading the history whole costs the
# database and the worker little more than reading its tail; above it, the whole read is most of what a
# turn costs the database (docs/benchmarks.md). Entries count against HISTORY_CACHE_MB whatever their size.
MIN_BYTES = 16 * 1024


@dataclass(frozen=True)
class CachedHistory:
    next_position: int
    item_count: int
    text: str  # the item texts at positions below next_position, in order, joined by commas
    # Each item's stored token count, in the same order (-1: stored before counts were kept).
    counts: array[int] = field(default_factory=lambda: array("q"))

    def size(self) -> int:
        return sys.getsizeof(self.text) + self.counts.itemsize * len(self.counts)


class HistoryCache:
    """A per-worker LRU of conversation histories, bounded by `max_bytes` of text (0 disables it)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedHistory] = OrderedDict()
        self._bytes = 0

    def get(self, conversation_id: str) -> CachedHistory | None:
        entry = self._entries.get(conversation_id)
        if entry is not None:
            self._entries.move_to_end(conversation_id)
        return entry

    def put(self, conversation_id: str, entry: CachedHistory) -> None:
        self.discard(conversation_id)
        size = entry.size()
        if sys.getsizeof(entry.text) < MIN_BYTES or size > self._max_bytes:
            return
        self._entries[conversation_id] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size()

    def discard(self, conversation_id: str) -> None:
        entry = self._entries.pop(conversation_id, None)
        if entry is not None:
            self._bytes -= entry.size()


def joined(prefix: str, tail: str) -> str:
    return f"{prefix},{tail}" if prefix and tail else prefix or tail


def stored_counts(values: Sequence[int | None] | None) -> array[int]:
    """Token counts as read from the item table, -1 where an item has none."""
    return array("q", [-1 if value is None else value for value in values or ()])
