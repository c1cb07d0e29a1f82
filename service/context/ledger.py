"""Token counts of a thread's items, kept per worker between turns so that deciding whether a turn fits costs
O(new items): only items added since the thread's last turn are tokenized.

An entry covers a history text (the stored item texts joined by commas, as the turn path reads it) and holds,
per item, its length in that text, its token count and what kind of item it is (where a truncation may
start). It stays valid as long as the next history starts with its text, which the schema guarantees except
after a deletion (then the entry is rebuilt). Counts start as estimates (service/context/tokens.py); when a
turn's usage comes back, OpenRouter's `input_tokens`, less what the items already exact cost, is what the
items not yet exact cost, as that model counted them: they are set to it, in proportion to their estimates.
So counts are exact up to the last reported turn's input, and estimated after it.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from service.context import tokens

OTHER, USER_MESSAGE, COMPACTION = 0, 1, 2
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def kind_of(item: object) -> int:
    if not isinstance(item, dict):
        return OTHER
    if item.get("type") == "compaction":
        return COMPACTION
    if item.get("role") == "user" and item.get("type", "message") == "message":
        return USER_MESSAGE
    return OTHER


@dataclass
class CountedItems:
    """Token counts of the items of one history text."""

    text: str = ""
    lengths: array[int] = field(default_factory=lambda: array("q"))
    counts: array[int] = field(default_factory=lambda: array("q"))
    kinds: bytearray = field(default_factory=bytearray)
    exact_upto: int = 0  # items before this index have exact counts
    total: int = 0
    root: str | None = None  # the thread's first response (chains) or conversation: OpenRouter's session id

    def __len__(self) -> int:
        return len(self.counts)

    def text_from(self, start: int) -> str:
        """The history text from item `start` on."""
        if start <= 0:
            return self.text
        if start >= len(self):
            return ""
        offset = sum(self.lengths[:start]) + start
        return self.text[offset:]

    def bodies(self) -> list[str]:
        """Each item's text."""
        out, offset = [], 0
        for length in self.lengths:
            out.append(self.text[offset : offset + length])
            offset += length + 1
        return out

    def item_text(self, index: int) -> str:
        offset = sum(self.lengths[:index]) + index
        return self.text[offset : offset + self.lengths[index]]

    @classmethod
    def of(cls, texts: Sequence[str], kinds: Sequence[int], counts: Sequence[int]) -> CountedItems:
        """Counts already known, for items given as texts."""
        entry = cls(",".join(texts), array("q", map(len, texts)), array("q", counts), bytearray(kinds))
        entry.total = sum(counts)
        return entry

    def size(self) -> int:
        return sys.getsizeof(self.text) + 8 * 2 * len(self) + len(self.kinds)

    def extended(self, history: str) -> CountedItems:
        """The counts for `history`, which must start with this entry's text (see `continues`)."""
        if history == self.text:
            return self
        tail = history[len(self.text) + 1 :] if self.text else history
        new = CountedItems(
            history, array("q", self.lengths), array("q", self.counts), bytearray(self.kinds), self.exact_upto
        )
        new.total, new.root = self.total, self.root
        new.append_bodies([bytes(raw) for raw in _ITEMS.decode(b"[" + tail.encode() + b"]")], text=None)
        return new

    def continues(self, history: str) -> bool:
        if not self.text:
            return True
        return history.startswith(self.text) and (len(history) == len(self.text) or history[len(self.text)] == ",")

    def append_bodies(self, bodies: Sequence[bytes | str], *, text: str | None) -> None:
        """Count items given as their JSON texts; `text` (if given) is this entry's new history text."""
        for body in bodies:
            raw = body.encode() if isinstance(body, str) else body
            item = msgspec.json.decode(raw)
            count = tokens.item_tokens(item)
            self.lengths.append(len(body) if isinstance(body, str) else len(raw.decode()))
            self.counts.append(count)
            self.kinds.append(kind_of(item))
            self.total += count
        if text is not None:
            self.text = text

    def with_input(self, bodies: Sequence[str]) -> CountedItems:
        """A copy that also covers the new input items (what the next turn's history starts with)."""
        new = CountedItems(
            self.text, array("q", self.lengths), array("q", self.counts), bytearray(self.kinds), self.exact_upto
        )
        new.total, new.root = self.total, self.root
        joined_input = ",".join(bodies)
        new.append_bodies(
            bodies, text=f"{self.text},{joined_input}" if self.text and bodies else self.text or joined_input
        )
        return new

    def correct(self, start: int, reported: int) -> None:
        """The items from `start` on (all of them sent in one request) cost `reported` tokens in all, as the
        model counted them: set the counts not yet exact so that they add up to it."""
        start = max(start, 0)
        exact_from = max(start, self.exact_upto)
        known = sum(self.counts[start:exact_from])
        estimated = sum(self.counts[exact_from:])
        unknown = reported - known
        pending = len(self) - exact_from
        if pending <= 0 or estimated <= 0 or unknown < pending:
            return  # the report contradicts the exact counts (another tokenizer, a provider's own framing)
        assigned = 0
        for index in range(exact_from, len(self)):
            share = self.counts[index] * unknown // estimated if index < len(self) - 1 else unknown - assigned
            share = max(share, 1)
            assigned += share
            self.total += share - self.counts[index]
            self.counts[index] = share
        self.exact_upto = len(self)


class TokenLedger:
    """Per-worker LRU of CountedItems by thread key (conversation id, or the response a chain continues
    from), bounded by `max_bytes` (0 keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CountedItems] = OrderedDict()
        self._bytes = 0

    def counted(self, key: str | None, history: str) -> CountedItems:
        entry = self._entries.get(key) if key else None
        if entry is not None:
            self._entries.move_to_end(key)  # type: ignore[arg-type]
            if entry.continues(history):
                return entry.extended(history)
        fresh = CountedItems(root=entry.root if entry is not None else None)
        return fresh.extended(history)

    def keep(self, key: str, entry: CountedItems) -> None:
        self.discard(key)
        size = entry.size()
        if size > self._max_bytes:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size()

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size()
