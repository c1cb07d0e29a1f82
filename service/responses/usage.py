"""The upstream's usage report, as stored, summed and shown. OpenRouter documents whole token counts and a cost in
US dollars; an upstream that reports a null, a negative, a fraction or an impossible number has its value left out,
as if it had not reported it, rather than breaking the turn that paid for the answer: the columns and the
conversation's running totals could not hold it (bigint, numeric(20, 10)), a metrics counter refuses to go down,
and OpenAI's clients read integers."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

# No model reads or writes more tokens in a response; a larger count is an upstream's fault. Summed over turns,
# counts this size still fit the totals' bigint columns.
MAX_TOKENS = 2**31 - 1
# Far above any single response's price; keeps the conversation's numeric(20, 10) total far from its 10^10 limit.
MAX_COST = 1_000_000

_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
# OpenAI's detail objects and the counts each holds; OpenRouter adds counts of its own there (cache writes).
_DETAILS = ("input_tokens_details", "output_tokens_details")


def token_count(value: Any) -> int | None:
    """A whole number of tokens (an integral float counts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= MAX_TOKENS else None


def is_cost(value: Any) -> bool:
    """A number a cost can be: finite, not negative (an upstream's -5 is not summed) and not absurd."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_COST


def _details(value: dict[str, Any]) -> dict[str, Any]:
    """A detail object's counts that are counts; fields that are not numbers (nor null) are kept as they came."""
    kept: dict[str, Any] = {}
    for name, field in value.items():
        if field is None or isinstance(field, bool | int | float):
            count = token_count(field)
            if count is not None:
                kept[name] = count
        else:
            kept[name] = field
    return kept


def sane_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage with every token count a whole number in range and the cost a sane amount; any other value of
    those fields is left out. Other fields (OpenRouter's `cost_details`, `is_byok`) are kept as they came."""
    sane: dict[str, Any] = {}
    for name, value in usage.items():
        if name in _COUNTS:
            count = token_count(value)
            if count is not None:
                sane[name] = count
        elif name in _DETAILS:
            if isinstance(value, dict):
                sane[name] = _details(value)
        elif name == "cost":
            if is_cost(value):
                sane[name] = value
        else:
            sane[name] = value
    return sane


def usage_numbers(usage: dict[str, Any] | None) -> tuple[int, int, Decimal]:
    """Input tokens, output tokens and cost, for the conversation's running totals."""
    if not isinstance(usage, dict):
        return 0, 0, Decimal(0)
    cost = usage.get("cost")
    return (
        token_count(usage.get("input_tokens")) or 0,
        token_count(usage.get("output_tokens")) or 0,
        Decimal(str(cost)) if is_cost(cost) else Decimal(0),
    )
