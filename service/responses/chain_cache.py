"""Response chains' histories kept in the worker, so a `previous_response_id` turn reads none of its history.

An entry is the history a child of a response sends upstream: its ancestors' items, oldest first, then the
response's own input and output items, as stored JSON texts joined by commas. A turn's finish adds the entry
of the response it stored (its parent's entry and its own items: nothing is read), so a chain continued in the
same worker, linear or branching, never reads its history. A miss (another worker made the response, or it
was evicted) walks a few responses up to the nearest cached ancestor (turn_store.read_previous), or reads
the whole chain (turn_store.chain_history).

An entry does not copy its parent's history: it holds its parent's entry and its own items only, and the whole
text is joined when a turn needs it (`ChainHistory.whole`). A copy per entry would cost a linear chain two
whole histories (the response continued and its child), and every branch of a response (regenerations,
parallel evaluations) one more whole history for the two items it adds, so that a few hundred branches would
fill the cache and evict the chains being continued. An entry MAX_LINKS links from a whole one is made whole
when it is next joined or continued, so joining one walks a bounded number of parts.

An entry keeps its ancestors alive, cached or not, so the budget counts what the entries hold alive (each part
once, for as long as anything refers to it: a part's bytes are taken off when CPython frees it, which reference
counting does at once), not what the cache lists; eviction goes on until that fits. Parts that turns in flight
hold are counted too: when they alone pass the budget, the cache keeps only its newest entry until they end.

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
from collections.abc import Iterable

# Links from an entry to the nearest whole one: joining an entry's text walks at most this many parts (one
# more for an entry not yet joined), and a linear chain holds one whole history per MAX_LINKS turns, which its
# later entries share.
MAX_LINKS = 16
# What an entry costs besides its text and counts: the object, its counts array and its slot in the cache.
_ENTRY_OVERHEAD = 256


class _Held:
    """The bytes the live entries of one cache hold."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class ChainHistory:
    """The history a child of a response sends upstream: `parent`'s (when not None), then `own`."""

    __slots__ = ("_held", "counts_own", "generation", "links", "own", "parent", "tenant_id")

    def __init__(
        self,
        tenant_id: str,
        generation: int,
        own: str,
        counts_own: array[int] | None = None,
        parent: ChainHistory | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.generation = generation
        self.parent = parent
        self.own = own  # this part's item texts joined by commas ("" for none)
        # Each of this part's items' stored token counts, in order (-1: stored before counts were kept).
        self.counts_own = counts_own if counts_own is not None else array("q")
        self.links: int = 0 if parent is None else parent.links + 1
        self._held: _Held | None = None  # the cache that counts this entry's bytes, once one holds it

    def followed_by(self, texts: Iterable[str], counts: Iterable[int]) -> ChainHistory:
        """This history followed by more items (their texts, some of them already joined by commas, and each
        item's count), as a new entry of the same tenant and generation, linked to this one."""
        if self.links >= MAX_LINKS:
            self.whole()  # made whole now, once for all its children
        return ChainHistory(self.tenant_id, self.generation, joined(*texts), array("q", counts), self)

    def whole(self) -> tuple[str, array[int]]:
        """The whole history's text and its items' stored token counts, oldest first (not to be changed). An
        entry MAX_LINKS links from a whole one keeps what is joined here and lets go of its ancestors: a
        response continued once is usually continued again (a linear chain's next turn, another branch)."""
        if self.parent is None:
            return self.own, self.counts_own
        parts: list[ChainHistory] = []
        entry: ChainHistory | None = self
        while entry is not None:
            parts.append(entry)
            entry = entry.parent
        parts.reverse()
        counts = array("q")
        for part in parts:
            counts.extend(part.counts_own)
        text = ",".join(part.own for part in parts if part.own)
        if self.links >= MAX_LINKS:
            before = self.size()
            self.own, self.counts_own, self.parent, self.links = text, counts, None, 0
            if self._held is not None:
                self._held.bytes += self.size() - before
        return text, counts

    def size(self) -> int:
        """This part's bytes (not its ancestors')."""
        return sys.getsizeof(self.own) + self.counts_own.itemsize * len(self.counts_own) + _ENTRY_OVERHEAD

    def _count_in(self, held: _Held) -> None:
        if self._held is None:
            self._held = held
            held.bytes += self.size()

    def __del__(self) -> None:
        if self._held is not None:
            self._held.bytes -= self.size()


class ChainCache:
    """A per-worker LRU of response chain histories by response id, bounded by `max_bytes` (0 disables it): the
    bytes its entries hold alive, their ancestors' parts included."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, ChainHistory] = OrderedDict()
        self._held = _Held()

    @property
    def held_bytes(self) -> int:
        """What the cache's entries and their ancestors hold, with the entries of turns in flight."""
        return self._held.bytes

    def __len__(self) -> int:
        return len(self._entries)

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
        if self._max_bytes == 0:
            return
        self.discard(response_id)
        if entry.size() > self._max_bytes:
            return
        chain: ChainHistory | None = entry
        while chain is not None and chain._held is None:  # its parts not counted yet (none held before)
            chain._count_in(self._held)
            chain = chain.parent
        self._entries[response_id] = entry
        # An evicted entry frees its parts only when no entry left refers to them: evict until what is held fits.
        while self._held.bytes > self._max_bytes and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def discard(self, response_id: str) -> None:
        self._entries.pop(response_id, None)


def joined(*parts: str) -> str:
    return ",".join(part for part in parts if part)
