"""Token counts of a thread's items, so that deciding whether a turn fits costs O(new items) on any worker.

Every stored item carries its count (`item.token_count`), read with the history: a turn tokenizes only its new
input, never the history, whether or not this worker ran the thread's last turn. The counts a turn's finish
stores are estimates (service/context/tokens.py), except for its input items when OpenRouter reported usage:
then they cost what the model counted, its `input_tokens` less what the history sent before them cost (their
stored counts) and less the request's instructions and tools (`exact_counts`). So the sum of the counts up to
the last reported turn's input is what the model counted then, and later items are estimated until the next
report. Items stored before counts were kept have none: they are estimated when read.

An entry covers a history text (the stored item texts joined by commas, as the turn path reads it) and holds,
per item, its length in that text, its token count and what kind of item it is (where a truncation may
start, what a tool output pairs with). A worker keeps the entries of its recent threads, so that a turn
there only looks at the items added since; an entry stays valid as long as the next history starts with its
text, which the schema guarantees except after a deletion (then the entry is rebuilt from the stored counts).
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from service.context import tokens

OTHER, USER_MESSAGE, COMPACTION, TOOL_CALL, TOOL_OUTPUT, REASONING, INSTRUCTION = range(7)
# A tool call and the item that answers it, paired by one field each (service/context/pairing.py): a call's
# `call_id` and its output's, except an MCP approval request, answered by the response naming its `id`.
CALL_KEY_FIELDS = {
    "function_call": "call_id",
    "custom_tool_call": "call_id",
    "computer_call": "call_id",
    "local_shell_call": "call_id",
    "shell_call": "call_id",
    "apply_patch_call": "call_id",
    "mcp_approval_request": "id",
}
OUTPUT_KEY_FIELDS = {
    "function_call_output": "call_id",
    "custom_tool_call_output": "call_id",
    "computer_call_output": "call_id",
    "local_shell_call_output": "call_id",
    "shell_call_output": "call_id",
    "apply_patch_call_output": "call_id",
    "mcp_approval_response": "approval_request_id",
}
TOOL_OUTPUT_TYPES = frozenset(OUTPUT_KEY_FIELDS)
_TOOL_CALL, _TOOL_OUTPUT, _REASONING = bytes([TOOL_CALL]), bytes([TOOL_OUTPUT]), bytes([REASONING])
# What a model's reasoning item never comes before in its own answer: after it, the item is alone.
_NOT_AFTER_REASONING = frozenset({USER_MESSAGE, INSTRUCTION, TOOL_OUTPUT, COMPACTION})
# A call that may go unanswered: OpenAI's MCP approval request (the client may never approve it).
_ANSWER_OPTIONAL = "mcp_approval_request"
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


class _Shape(msgspec.Struct):
    """What kind_of reads of an item (its other fields are skipped while decoding)."""

    type: Any = "message"
    role: Any = None


_SHAPE = msgspec.json.Decoder(_Shape)
_SHAPES = msgspec.json.Decoder(list[_Shape])


class _Paired(msgspec.Struct):
    """What pairing reads of a tool call or output (its other fields are skipped while decoding)."""

    type: Any = None
    call_id: Any = None
    id: Any = None
    approval_request_id: Any = None
    status: Any = None


_PAIRED = msgspec.json.Decoder(_Paired)
_KEY_FIELDS = {**CALL_KEY_FIELDS, **OUTPUT_KEY_FIELDS}


class Paired(NamedTuple):
    type: Any
    key: str | None  # the id pairing a call with its output (the same value on both; None for other items)
    status: Any


def call_of(body: str | bytes) -> Paired:
    item = _PAIRED.decode(body)
    field_name = _KEY_FIELDS.get(item.type) if isinstance(item.type, str) else None
    value = getattr(item, field_name) if field_name is not None else None
    return Paired(item.type, value if isinstance(value, str) else None, item.status)


def call_id_of(body: str | bytes) -> str | None:
    """The id pairing a call with its output (the same value on both), None for other items."""
    return call_of(body).key


def _kind(type_: Any, role: Any) -> int:
    if type_ == "compaction":
        return COMPACTION
    if type_ == "message":
        if role == "user":
            return USER_MESSAGE
        return INSTRUCTION if role in ("system", "developer") else OTHER
    if type_ in CALL_KEY_FIELDS:
        return TOOL_CALL
    if type_ in TOOL_OUTPUT_TYPES:
        return TOOL_OUTPUT
    return REASONING if type_ == "reasoning" else OTHER


def kind_of(item: object) -> int:
    if not isinstance(item, dict):
        return OTHER
    return _kind(item.get("type", "message"), item.get("role"))


def kind_of_body(body: bytes | str) -> int:
    shape = _SHAPE.decode(body)
    return _kind(shape.type, shape.role)


def exact_counts(estimates: Sequence[int], reported: int) -> list[int] | None:
    """Items that cost `reported` tokens together, as a model counted them: each its share, in proportion to its
    estimate. None when the report cannot be theirs (less than a token each: another tokenizer's framing)."""
    if not estimates or reported < len(estimates):
        return None
    estimated = sum(estimates)
    shares, assigned = [], 0
    for index, estimate in enumerate(estimates):
        last = index == len(estimates) - 1
        share = reported - assigned if last else max(estimate * reported // max(estimated, 1), 1)
        shares.append(share)
        assigned += share
    return shares if shares[-1] >= 1 else None


@dataclass
class CallPairing:
    """Tool calls and their outputs read in order: an output answers the latest call of its id still waiting
    (an agent that numbers its calls per turn uses an id again for a new call). Also used whole, on a list of
    items (service/context/pairing.py)."""

    waiting: dict[str | None, int] = field(default_factory=dict)  # id -> the call's index
    lone_outputs: list[int] = field(default_factory=list)  # no call of its id waiting: none, or answered already
    lone_calls: list[int] = field(default_factory=list)  # waiting when another call took its id: never answered
    optional: set[int] = field(default_factory=set)  # the calls that may go unanswered (MCP approval requests)
    answers: dict[int, int] | None = None  # output index -> call index, kept when given

    def copy(self) -> CallPairing:
        answers = None if self.answers is None else dict(self.answers)
        waiting, lone_outputs, lone_calls = dict(self.waiting), list(self.lone_outputs), list(self.lone_calls)
        return CallPairing(waiting, lone_outputs, lone_calls, set(self.optional), answers)

    def read(self, index: int, kind: int, body: str | bytes | msgspec.Raw) -> None:
        """Item `index` of kind TOOL_CALL or TOOL_OUTPUT, whose text is `body`."""
        item = call_of(body)
        if kind == TOOL_CALL:
            replaced = self.waiting.get(item.key)
            if replaced is not None:
                self.lone_calls.append(replaced)
            self.waiting[item.key] = index
            if item.type == _ANSWER_OPTIONAL:
                self.optional.add(index)
        elif kind == TOOL_OUTPUT:
            call = self.waiting.pop(item.key, None)
            if call is None:
                self.lone_outputs.append(index)
            elif self.answers is not None:
                self.answers[index] = call

    def unanswered(self, answered: Collection[str | None] = ()) -> list[int]:
        """The calls no output answers (but those `answered`, by the new input, and MCP approval requests)."""
        found = [index for index in self.lone_calls if index not in self.optional]
        found.extend(index for key, index in self.waiting.items() if key not in answered and index not in self.optional)
        return found


@dataclass
class CountedItems:
    """Token counts of the items of one history text."""

    text: str = ""
    lengths: array[int] = field(default_factory=lambda: array("q"))
    counts: array[int] = field(default_factory=lambda: array("q"))
    kinds: bytearray = field(default_factory=bytearray)
    total: int = 0
    root: str | None = None  # the thread's first response (chains) or conversation: OpenRouter's session id
    # Its tool calls paired with their outputs, read from the items each turn adds. Never sent, as providers refuse
    # them: an output that answers no call waiting ("No tool call found …": its call deleted through the items
    # API, the output added alone there; "Duplicate function_call_output …": a second one), and a call no output
    # answers, unless the new input does ("No tool output found …": its output deleted, a call cut off before
    # its end, or one added alone).
    calls: CallPairing = field(default_factory=CallPairing)
    # Its reasoning items that the item they came with does not follow (an answer cut off while it reasoned, or
    # that item deleted): never sent, as OpenAI refuses them ("… was provided without its required following
    # item"). Those at the end of the history are not listed: what comes after them is not known yet.
    lone_reasoning: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.counts)

    def unsendable(self, answered: Collection[str | None] = ()) -> tuple[int, ...]:
        """The items never sent, in order: the lone tool outputs, the calls nothing answers (`answered`: the call
        ids the new input answers), and the reasoning items those leave alone, as well as the lone ones and those
        ending the history (a turn's new input comes after them, never the item they came with)."""
        kinds = self.kinds
        unanswered = self.calls.unanswered(answered)
        dropped = {*self.calls.lone_outputs, *unanswered}
        alone = set(self.lone_reasoning)
        end = len(kinds)
        while end > 0 and kinds[end - 1] == REASONING:
            end -= 1
        alone.update(range(end, len(kinds)))
        for index in unanswered:
            # The reasoning a call left out came with goes too, unless another call of its round is sent after
            # it (what follows a round's calls belongs to a later answer).
            start, after = index, index + 1
            while start > 0 and (kinds[start - 1] == REASONING or start - 1 in dropped):
                start -= 1
            while after < len(kinds) and after in dropped:
                after += 1
            if after == len(kinds) or kinds[after] != TOOL_CALL:
                alone.update(i for i in range(start, after) if kinds[i] == REASONING)
        if not alone and not dropped:
            return ()
        return tuple(sorted(dropped | alone))

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

    def texts_from(self, start: int) -> Iterator[tuple[int, str]]:
        """Each item's index and text, from item `start` on."""
        offset = sum(self.lengths[:start]) + start
        for index in range(start, len(self)):
            length = self.lengths[index]
            yield index, self.text[offset : offset + length]
            offset += length + 1

    def item_text(self, index: int) -> str:
        offset = sum(self.lengths[:index]) + index
        return self.text[offset : offset + self.lengths[index]]

    @classmethod
    def of(cls, texts: Sequence[str], kinds: Sequence[int], counts: Sequence[int]) -> CountedItems:
        """Counts already known, for items given as texts."""
        entry = cls(",".join(texts), array("q", map(len, texts)), array("q", counts), bytearray(kinds))
        entry.total = sum(counts)
        entry._pair(0, texts)
        return entry

    def size(self) -> int:
        return sys.getsizeof(self.text) + 8 * 2 * len(self) + len(self.kinds)

    def _copy(self) -> CountedItems:
        new = CountedItems(self.text, array("q", self.lengths), array("q", self.counts), bytearray(self.kinds))
        new.total, new.root = self.total, self.root
        new.calls, new.lone_reasoning = self.calls, self.lone_reasoning  # replaced, never changed in place
        return new

    def _pair(self, first: int, bodies: Sequence[str | bytes | msgspec.Raw]) -> None:
        """Pair the tool outputs among items `first` on (`bodies`: their texts) with the calls before them (each
        call with the first output after it), and each reasoning item from the last ones before `first` on with
        what follows it."""
        self._follow_reasoning(first)
        kinds = self.kinds
        if kinds.find(_TOOL_CALL, first) < 0 and kinds.find(_TOOL_OUTPUT, first) < 0:
            return
        calls = self.calls.copy()
        for index in range(first, len(kinds)):
            kind = kinds[index]
            if kind in (TOOL_CALL, TOOL_OUTPUT):
                calls.read(index, kind, bodies[index - first])
        self.calls = calls

    def _follow_reasoning(self, first: int) -> None:
        """List the reasoning items from `first` on, or ending the history before it, that what follows them
        leaves alone (a run of them is alone together)."""
        kinds = self.kinds
        start = first
        while start > 0 and kinds[start - 1] == REASONING:  # ended the history: followed by item `first` now
            start -= 1
        run = kinds.find(_REASONING, start)
        if run < 0:
            return
        lone = list(self.lone_reasoning)
        while run >= 0:
            after = run
            while after < len(kinds) and kinds[after] == REASONING:
                after += 1
            if after == len(kinds):
                break  # at the end: what follows is not known yet
            if kinds[after] in _NOT_AFTER_REASONING:
                lone.extend(range(run, after))
            run = kinds.find(_REASONING, after)
        self.lone_reasoning = tuple(lone)

    def extended(self, history: str, stored: Sequence[int] | None = None) -> CountedItems:
        """The counts for `history`, which must start with this entry's text (see `continues`). `stored`: the
        stored count of every item of `history`, negative where an item has none; without it, the items after
        this entry's are estimated."""
        if history == self.text:
            return self
        tail = history[len(self.text) + 1 :] if self.text else history
        new = self._copy()
        items = b"[" + tail.encode() + b"]"
        raws, shapes = _ITEMS.decode(items), _SHAPES.decode(items)  # each one pass in C, not one call per item
        first = len(self)
        if stored is None or len(stored) != first + len(raws):
            stored = None  # not this history's counts: estimate rather than misattribute
        # Stored JSON is mostly ASCII, where a text's length is its byte count.
        lengths = map(len, raws) if tail.isascii() else (len(bytes(raw).decode()) for raw in raws)
        new.lengths.extend(lengths)
        new.kinds.extend(_kind(shape.type, shape.role) for shape in shapes)
        counts = array("q", stored[first:]) if stored is not None else array("q", [-1]) * len(raws)
        for index, count in enumerate(counts):
            if count < 0:  # stored before counts were kept, or not read with the history: estimated
                counts[index] = tokens.body_tokens(raws[index])
        new.counts.extend(counts)
        new.total += sum(counts)
        new.text = history
        new._pair(first, raws)
        return new

    def continues(self, history: str) -> bool:
        if not self.text:
            return True
        return history.startswith(self.text) and (len(history) == len(self.text) or history[len(self.text)] == ",")

    def _append(self, length: int, body: bytes | str, count: int) -> None:
        """`count` < 0: not known, estimated here."""
        if count < 0:
            count = tokens.body_tokens(body)
        kind = kind_of_body(body)
        self.lengths.append(length)
        self.counts.append(count)
        self.kinds.append(kind)
        self.total += count

    def with_input(self, bodies: Sequence[str], counts: Sequence[int]) -> CountedItems:
        """A copy that also covers the new input items (what the next turn's history starts with), with the
        counts their finish stores."""
        new = self._copy()
        first = len(new)
        for body, count in zip(bodies, counts, strict=True):
            new._append(len(body), body, count)
        new._pair(first, bodies)
        joined_input = ",".join(bodies)
        new.text = f"{self.text},{joined_input}" if self.text and bodies else self.text or joined_input
        return new


class TokenLedger:
    """Per-worker LRU of CountedItems by thread key (conversation id, or the response a chain continues
    from), bounded by `max_bytes` (0 keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CountedItems] = OrderedDict()
        self._bytes = 0

    def counted(self, key: str | None, history: str, stored: Sequence[int] | None = None) -> CountedItems:
        """`stored`: the stored count of every item of `history`, as read with it (negative where unknown)."""
        entry = self._entries.get(key) if key else None
        if entry is not None:
            self._entries.move_to_end(key)  # type: ignore[arg-type]
            if entry.continues(history):
                return entry.extended(history, stored)
        fresh = CountedItems(root=entry.root if entry is not None else None)
        return fresh.extended(history, stored)

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
