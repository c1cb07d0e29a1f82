"""Deciding what of a thread's history goes upstream so that a turn fits its model's context window.

`truncation: "auto"` (OpenAI's rule): drop items from the beginning of the history until the input fits,
so that what is kept starts with a user message (a turn boundary, so a function call is never split from its
output, nor a reasoning item from what it belongs to), or, in an agent's loop of tool calls, with the start of a
round of calls, the latest user message sent before it. The new input is never dropped. `"disabled"` (the
default): a turn known not to fit is refused. Either way, a new input that alone cannot fit is refused:
400 `context_length_exceeded`, param `input`. Nothing stored is ever deleted: this only chooses what is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.context import pairing
from service.context.catalog import ModelWindow
from service.context.ledger import COMPACTION, REASONING, TOOL_CALL, USER_MESSAGE, CountedItems
from service.errors import InvalidRequest
from service.upstream.errors import UpstreamError, context_length_exceeded, refused_before_upstream

TRUNCATION_MODES = ("auto", "disabled")
# Where a model's round of tool calls starts (its reasoning, then its calls).
_ROUND_STARTS = (REASONING, TOOL_CALL)
# A model's own completion limit is often as large as its window; reserving all of it would leave no room for
# input, so at most this share of the window is kept for the answer when max_output_tokens is not given.
_COMPLETION_RESERVE_SHARE = 4
# How providers state their window and their own count of what was sent, through OpenRouter:
# - OpenRouter's (and OpenAI's): "maximum context length is 4000 tokens. However, you requested about 5230 tokens
#   (5030 of text input, 200 in the output)", or "... your messages resulted in 5230 tokens";
# - Anthropic's: "prompt is too long: 5230 tokens > 4000 maximum";
# - Google's: "The input token count (5230) exceeds the maximum number of tokens allowed (4000)";
# - xAI's: "This model's maximum prompt length is 4000 but the request contains 5230 tokens";
# - Anthropic's when the answer's room is what does not fit: "input length and `max_tokens` exceed context limit:
#   5030 + 200 > 4000";
# - Text Generation Inference's: "`inputs` tokens + `max_new_tokens` must be <= 4000. Given: 5030 `inputs` tokens
#   and 200 `max_new_tokens`";
# - llama.cpp's: "request (5230 tokens) exceeds the available context size (4000 tokens)".
_LIMIT_AND_REQUESTED = (
    re.compile(
        r"context length is (?P<limit>\d+) tokens.*?(?:requested (?:about )?|resulted in )(?P<requested>\d+) tokens"
        r"(?: \((?P<text>\d+) of text input)?",
        re.DOTALL,
    ),
    re.compile(r"too long: (?P<requested>\d+) tokens > (?P<limit>\d+) maximum"),
    re.compile(r"token count \((?P<requested>\d+)\) exceeds the maximum number of tokens allowed \((?P<limit>\d+)\)"),
    re.compile(r"maximum prompt length is (?P<limit>\d+) but the request contains (?P<requested>\d+) tokens"),
    re.compile(r"exceed context limit: (?P<text>\d+) \+ (?P<output>\d+) > (?P<limit>\d+)"),
    re.compile(
        r"must be <= (?P<limit>\d+)\. Given: (?P<text>\d+) `inputs` tokens and (?P<output>\d+) `max_new_tokens`"
    ),
    re.compile(r"request \((?P<requested>\d+) tokens\) exceeds the available context size \((?P<limit>\d+) tokens\)"),
)


def truncation_mode(params: dict[str, Any]) -> str:
    mode = params.get("truncation")
    if mode is None:
        return "disabled"
    if mode not in TRUNCATION_MODES:
        raise InvalidRequest("truncation must be 'auto' or 'disabled'", param="truncation", code="invalid_value")
    return str(mode)


MIN_COMPACT_THRESHOLD = 1000
# Without a compact_threshold, compaction starts when the input would take this share of what it may take (the
# model's window less the room for the answer).
_DEFAULT_COMPACT_SHARE = 0.8


def compaction_threshold(params: dict[str, Any], window: ModelWindow | None = None) -> int | None:
    """The token count past which a turn compacts first (`context_management`), or None: no compaction."""
    entries = params.get("context_management")
    if entries is None:
        return None
    # At least one entry, as OpenAI's spec says (minItems): an empty list is no setting a turn could follow.
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise InvalidRequest("context_management must be a non-empty array of objects", param="context_management")
    threshold: int | None = None
    for index, entry in enumerate(entries):
        if entry.get("type") != "compaction":
            raise InvalidRequest(
                "context_management entries must have type 'compaction'",
                param=f"context_management[{index}].type",
                code="invalid_value",
            )
        value = entry.get("compact_threshold")
        if value is None:
            # A share of what the input may take, not of the window: with a large answer reserve (a model whose
            # completion limit is a quarter of its window) a share of the window lay past the input's limit.
            threshold = int(input_budget(window, params) * _DEFAULT_COMPACT_SHARE) if window is not None else threshold
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < MIN_COMPACT_THRESHOLD:
            raise InvalidRequest(
                f"compact_threshold must be an integer of at least {MIN_COMPACT_THRESHOLD}",
                param=f"context_management[{index}].compact_threshold",
                code="invalid_value",
            )
        threshold = value
    return threshold


def input_budget(window: ModelWindow, params: dict[str, Any]) -> int:
    """The tokens the input may take: the window less the room the answer needs."""
    requested = params.get("max_output_tokens")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        reserve = requested
    else:
        reserve = min(window.max_completion_tokens or 0, window.context_length // _COMPLETION_RESERVE_SHARE)
    return window.context_length - reserve


@dataclass(frozen=True)
class Fit:
    start: int  # the first history item sent
    history_tokens: int
    input_tokens: int
    overhead_tokens: int  # instructions, tools
    # Items before `start` that are sent all the same, in order: the latest compaction item (never dropped) and
    # the calls the new input answers (service/context/pairing.py).
    pinned: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()  # items from `start` on that are not sent: tool outputs whose call is not

    def history_text(self, counted: CountedItems) -> str:
        if not self.pinned and not self.skipped:
            return counted.text_from(self.start)
        parts = [counted.item_text(index) for index in self.pinned]
        if not self.skipped:
            parts.append(counted.text_from(self.start))
        else:
            skipped = set(self.skipped)
            parts.extend(text for index, text in counted.texts_from(self.start) if index not in skipped)
        return ",".join(part for part in parts if part)

    @property
    def total(self) -> int:
        return self.history_tokens + self.input_tokens + self.overhead_tokens


def check_answer_room(model: str, window: ModelWindow, params: dict[str, Any]) -> None:
    """A max_output_tokens that leaves the input no room in the window is the client's mistake to name, not a
    negative input budget (raised as a turn's other refusals found before the model is called are)."""
    requested = params.get("max_output_tokens")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested >= window.context_length:
        raise refused_before_upstream(
            f"max_output_tokens is {requested}, but model '{model}' has a context window of {window.context_length} "
            "tokens in all, its input included: ask for fewer output tokens.",
            code="invalid_value",
            param="max_output_tokens",
        )


def too_long(model: str, needed: int, budget: int, *, what: str) -> UpstreamError:
    return context_length_exceeded(
        f"Context length exceeded: {what} needs about {needed} tokens, but model '{model}' can take {budget} "
        "tokens of input (its context window less the room for the answer)."
    )


def fit(
    counted: CountedItems,
    *,
    input_tokens: int,
    overhead_tokens: int,
    budget: int,
    truncate: bool,
    model: str,
    answered: Sequence[str] = (),
) -> Fit:
    """`answered`: the call ids the new input's tool outputs answer."""
    fixed = input_tokens + overhead_tokens
    if fixed > budget:
        raise too_long(model, fixed, budget, what="the new input alone")
    if counted.total + fixed <= budget:
        return whole(counted, input_tokens, overhead_tokens, answered)
    if not truncate:
        raise too_long(
            model,
            counted.total + fixed,
            budget,
            what='the conversation with its new input (truncation "auto" would drop its oldest turns)',
        )
    room = budget - fixed
    # The latest compaction item may start what is sent (it stands for what came before it) but never be
    # dropped: once the cut passes it, it is sent before the kept turns. So are the calls the input answers.
    latest = counted.kinds.rfind(bytes([COMPACTION]))
    calls = pairing.answered_calls(counted, answered)
    fitted = _cut(counted, sorted({latest, *calls} - {-1}), room, input_tokens, overhead_tokens)
    if fitted is None and latest >= 0:
        # A summary larger than this model's room (one made by a model with a larger window): the turn goes
        # without it, as for any history too long to send, rather than never.
        fitted = _cut(counted, calls, room, input_tokens, overhead_tokens)
    if fitted is None:
        what = "the new input with the calls it answers"
        raise too_long(model, fixed + sum(counted.counts[pin] for pin in calls), budget, what=what)
    return _unorphaned(counted, fitted, answered)


def least(counted: CountedItems, input_tokens: int, overhead_tokens: int, answered: Sequence[str] = ()) -> Fit:
    """Only what must go: the new input, with the calls it answers (no history but them, no summary)."""
    calls = pairing.answered_calls(counted, answered)
    return Fit(len(counted), sum(counted.counts[call] for call in calls), input_tokens, overhead_tokens, tuple(calls))


def whole(counted: CountedItems, input_tokens: int, overhead_tokens: int, answered: Sequence[str] = ()) -> Fit:
    """The whole history sent, but for what is never sent (CountedItems.unsendable; `answered`: the call ids the
    new input answers)."""
    lone = counted.unsendable(answered)
    sent_tokens = counted.total - sum(counted.counts[index] for index in lone)
    return Fit(0, sent_tokens, input_tokens, overhead_tokens, skipped=lone)


def _cut(counted: CountedItems, pins: list[int], room: int, input_tokens: int, overhead_tokens: int) -> Fit | None:
    """The first turn boundary from which the history, with `pins` sent before it, fits `room`; else only the
    pins; None when not even they fit. A boundary is a user message (or a compaction item), or the start of a
    model's round of tool calls: an agent's loop has no user message for many rounds, and cut only at user
    messages, all of it but the calls the new input answers went at once. Cut at a round, the latest user
    message before it is sent too (pinned), so that what is sent still starts with what the user asked."""
    kinds, counts = counted.kinds, counted.counts
    dropped = pinned_cost = passed = 0
    asked = -1  # the latest user message before `index`
    for index in range(len(counted)):
        while passed < len(pins) and pins[passed] < index:
            pinned_cost += counts[pins[passed]]
            passed += 1
        kept = counted.total - dropped + pinned_cost
        kind = kinds[index]
        if kept <= room and kind in (USER_MESSAGE, COMPACTION):
            return Fit(index, kept, input_tokens, overhead_tokens, tuple(pins[:passed]))
        if kind in _ROUND_STARTS and index > 0 and kinds[index - 1] not in _ROUND_STARTS and asked >= 0:
            with_question = kept + (counts[asked] if asked not in pins[:passed] else 0)
            if with_question <= room:
                pinned = tuple(sorted({*pins[:passed], asked}))
                return Fit(index, with_question, input_tokens, overhead_tokens, pinned)
        if kind == USER_MESSAGE:
            asked = index
        dropped += counts[index]
    # No turn boundary fits: only the new input goes, with what must go with it.
    needed = sum(counts[pin] for pin in pins)
    return None if needed > room else Fit(len(counted), needed, input_tokens, overhead_tokens, tuple(pins))


def _unorphaned(counted: CountedItems, fitted: Fit, answered: Sequence[str]) -> Fit:
    """The fit without the tool outputs whose call the cut dropped, nor what it kept that is never sent."""
    orphans = pairing.orphaned_outputs(counted, fitted.start, fitted.pinned)
    lone = [index for index in counted.unsendable(answered) if index >= fitted.start and index not in orphans]
    if not orphans and not lone:
        return fitted
    skipped = tuple(sorted((*orphans, *lone)))
    saved = sum(counted.counts[index] for index in skipped)
    return replace(fitted, history_tokens=fitted.history_tokens - saved, skipped=skipped)


# Without the provider's numbers, what was sent is scaled by the first step after a first refusal, and by the
# second after any further one (of the same turn, or on a model refused before: its budget is remembered,
# service/context/learned.py): a thread just past the window loses little, one far past it comes down quickly.
_UNSTATED_STEPS = (0.8, 0.5)


def _stated(error: UpstreamError) -> tuple[int, int, int] | None:
    """The window, the whole request and the answer's room, in tokens, when the refusal states them."""
    found = next((m for m in (p.search(error.message) for p in _LIMIT_AND_REQUESTED) if m is not None), None)
    if found is None:
        return None
    numbers = {name: int(value) for name, value in found.groupdict().items() if value is not None}
    # Some state the input and the answer's room apart, not their sum.
    requested = numbers.get("requested", numbers.get("text", 0) + numbers.get("output", 0))
    output = numbers.get("output", requested - numbers["text"] if "text" in numbers else 0)
    return numbers["limit"], requested, output


def answer_room_past_window(error: UpstreamError) -> bool:
    """Whether the refusal states that the room asked for the answer (max_output_tokens) alone takes the whole
    window: no shorter input fits then, and what was sent says nothing about the window's room for input."""
    stated = _stated(error)
    return stated is not None and stated[2] >= stated[0]


def shrunk_budget(fitted: Fit, error: UpstreamError, *, again: bool = False) -> int:
    """The budget for another try after the provider still found the input too long: what was sent, scaled by
    how much too long the provider found it (when it says), else by a fixed step (`again`: refused before)."""
    shrunk = int(fitted.total * _UNSTATED_STEPS[again])
    stated = _stated(error)
    if stated is not None:
        limit, requested, output = stated
        if requested > limit > output >= 0:
            shrunk = int(fitted.total * (limit - output) / (requested - output) * 0.95)
    return max(min(shrunk, fitted.total - 1), 0)
