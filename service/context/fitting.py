"""Deciding what of a thread's history goes upstream so that a turn fits its model's context window.

`truncation: "auto"` (OpenAI's rule): drop items from the beginning of the history until the input fits,
so that what is kept starts with a user message (a turn boundary, so a function call is never split from its
output, nor a reasoning item from what it belongs to). The new input is never dropped. `"disabled"` (the
default): a turn known not to fit is refused. Either way, a new input that alone cannot fit is refused:
400 `context_length_exceeded`, param `input`. Nothing stored is ever deleted: this only chooses what is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.context.catalog import ModelWindow
from service.context.ledger import COMPACTION, USER_MESSAGE, CountedItems
from service.errors import InvalidRequest
from service.upstream.errors import UpstreamError, context_length_exceeded

TRUNCATION_MODES = ("auto", "disabled")
# A model's own completion limit is often as large as its window; reserving all of it would leave no room for
# input, so at most this share of the window is kept for the answer when max_output_tokens is not given.
_COMPLETION_RESERVE_SHARE = 4
# "maximum context length is 4000 tokens. However, you requested about 5230 tokens (5030 of text input, 200 in
# the output)": the provider's own count of the input.
_LIMIT_AND_REQUESTED = re.compile(
    r"context length is (\d+) tokens.*?requested (?:about )?(\d+) tokens(?: \((\d+) of text input)?", re.DOTALL
)


def truncation_mode(params: dict[str, Any]) -> str:
    mode = params.get("truncation")
    if mode is None:
        return "disabled"
    if mode not in TRUNCATION_MODES:
        raise InvalidRequest("truncation must be 'auto' or 'disabled'", param="truncation", code="invalid_value")
    return str(mode)


MIN_COMPACT_THRESHOLD = 1000
# Without a compact_threshold, compaction starts when the input would take this share of the model's window.
_DEFAULT_COMPACT_SHARE = 0.8


def compaction_threshold(params: dict[str, Any], window: ModelWindow | None = None) -> int | None:
    """The token count past which a turn compacts first (`context_management`), or None: no compaction."""
    entries = params.get("context_management")
    if entries is None:
        return None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidRequest("context_management must be an array of objects", param="context_management")
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
            threshold = int(window.context_length * _DEFAULT_COMPACT_SHARE) if window is not None else threshold
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
    pinned: int = -1  # a compaction item before `start` that is sent all the same (the latest is never dropped)

    def history_text(self, counted: CountedItems) -> str:
        rest = counted.text_from(self.start)
        if self.pinned < 0:
            return rest
        pinned = counted.item_text(self.pinned)
        return f"{pinned},{rest}" if rest else pinned

    @property
    def total(self) -> int:
        return self.history_tokens + self.input_tokens + self.overhead_tokens


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
) -> Fit:
    fixed = input_tokens + overhead_tokens
    if fixed > budget:
        raise too_long(model, fixed, budget, what="the new input alone")
    if counted.total + fixed <= budget:
        return Fit(0, counted.total, input_tokens, overhead_tokens)
    if not truncate:
        raise too_long(
            model,
            counted.total + fixed,
            budget,
            what='the conversation with its new input (truncation "auto" would drop its oldest turns)',
        )
    room = budget - fixed
    # The latest compaction item may start what is sent (it stands for what came before it) but never be
    # dropped: once the cut passes it, it is sent before the kept turns.
    latest = counted.kinds.rfind(bytes([COMPACTION]))
    pinned_cost = counted.counts[latest] if latest >= 0 else 0
    dropped = 0
    for index in range(len(counted)):
        pinned = latest if 0 <= latest < index else -1
        kept = counted.total - dropped + (pinned_cost if pinned >= 0 else 0)
        if kept <= room and counted.kinds[index] in (USER_MESSAGE, COMPACTION):
            return Fit(index, kept, input_tokens, overhead_tokens, pinned)
        dropped += counted.counts[index]
    # No turn boundary fits: only the new input goes (with the latest compaction item, which must).
    if latest < 0:
        return Fit(len(counted), 0, input_tokens, overhead_tokens)
    if pinned_cost > room:
        raise too_long(model, fixed + pinned_cost, budget, what="the new input with the conversation's summary")
    return Fit(len(counted), pinned_cost, input_tokens, overhead_tokens, latest)


def shrunk_budget(fitted: Fit, error: UpstreamError) -> int:
    """The budget for another try after the provider still found the input too long: what was sent, scaled by
    how much too long the provider found it (when it says), else by a fixed step."""
    shrunk = int(fitted.total * 0.8)
    found = _LIMIT_AND_REQUESTED.search(error.message)
    if found is not None:
        limit, requested = int(found.group(1)), int(found.group(2))
        output = requested - int(found.group(3)) if found.group(3) else 0
        if requested > limit > output >= 0:
            shrunk = int(fitted.total * (limit - output) / (requested - output) * 0.95)
    return min(shrunk, fitted.total - 1)
