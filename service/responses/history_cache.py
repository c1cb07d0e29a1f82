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
memory. Beyond the byte budget an entry chosen at random is evicted, not the least recently used: a worker's
conversations are typically taken in turn (many users, each with a conversation going), and once they need
more than the budget, least-recently-used eviction drops each entry just before its next turn, so nothing is
ever read from the cache. Random eviction keeps about budget / need of them, and each later eviction takes an
entry just used with probability 1 / entries only.
"""

from __future__ import annotations

import random
import sys
from array import array
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
    """A per-worker cache of conversation histories, bounded by `max_bytes` of texts and their token counts (0
    disables it), evicting at random (the module's docstring says why)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: dict[str, CachedHistory] = {}
        self._ids: list[str] = []  # the cached conversations, for choosing a victim at random
        self._slots: dict[str, int] = {}  # each cached conversation's index in _ids
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, conversation_id: str) -> CachedHistory | None:
        return self._entries.get(conversation_id)

    def put(self, conversation_id: str, entry: CachedHistory) -> None:
        self.discard(conversation_id)
        size = entry.size()
        if sys.getsizeof(entry.text) < MIN_BYTES or size > self._max_bytes:
            return
        while self._bytes + size > self._max_bytes:
            self.discard(self._ids[random.randrange(len(self._ids))])  # noqa: S311 - a victim, not a secret
        self._entries[conversation_id] = entry
        self._slots[conversation_id] = len(self._ids)
        self._ids.append(conversation_id)
        self._bytes += size

    def discard(self, conversation_id: str) -> None:
        entry = self._entries.pop(conversation_id, None)
        if entry is None:
            return
        self._bytes -= entry.size()
        # Swap the last id into the freed slot, so that removing is O(1).
        slot = self._slots.pop(conversation_id)
        last = self._ids.pop()
        if last != conversation_id:
            self._ids[slot] = last
            self._slots[last] = slot


def joined(prefix: str, tail: str) -> str:
    return f"{prefix},{tail}" if prefix and tail else prefix or tail


def stored_counts(values: Sequence[int | None] | None) -> array[int]:
    """Token counts as read from the item table, -1 where an item has none."""
    return array("q", [-1 if value is None else value for value in values or ()])
