"""The one pagination helper for OpenAI-style item lists: `after` (an item id), `limit` 1-100 (default 20),
`order` asc|desc (default desc); answers carry first_id, last_id and has_more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select

from service.errors import InvalidRequest
from service.items import item_view


@dataclass(frozen=True)
class PageRequest:
    after: str | None
    limit: int
    order: Literal["asc", "desc"]


def client_integer(text: str) -> int | None:
    """An integer as clients write one: an optional '-' and at most 18 ASCII digits. int() also takes other
    scripts' digits, spaces and "1_0", which no client means, and refuses more than 4,300 digits with an error."""
    digits = text.removeprefix("-")
    if 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit():
        return int(text)
    return None


def parse_page(after: str | None, limit: str | None, order: str | None) -> PageRequest:
    if limit is None or limit == "":
        size = 20
    else:
        parsed = client_integer(limit)
        if parsed is None:
            raise InvalidRequest(
                f"limit must be an integer between 1 and 100, got {limit[:40]!r}", param="limit", code="invalid_type"
            )
        size = parsed
        # OpenAI's codes for a number out of its range.
        if size < 1:
            raise InvalidRequest(
                f"limit must be between 1 and 100, got {size}", param="limit", code="integer_below_min_value"
            )
        if size > 100:
            raise InvalidRequest(
                f"limit must be between 1 and 100, got {size}", param="limit", code="integer_above_max_value"
            )
    direction = order or "desc"
    if direction not in {"asc", "desc"}:
        # OpenAI's words; its enum is matched exactly, so "ASC" is refused too.
        message = f"Invalid value: {direction[:40]!r}. Supported values are: 'asc' and 'desc'."
        raise InvalidRequest(message, param="order", code="invalid_value")
    return PageRequest(after=after or None, limit=size, order=direction)  # type: ignore[arg-type]


def item_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def keyset_page(stmt: Select[Any], column: ColumnElement[Any], page: PageRequest, after: Any) -> Select[Any]:
    """`stmt` cut to the page: its rows past `after` (a value of `column`, None for the first page) in the page's
    order of `column`, limit + 1 of them (the extra one tells `item_page` whether there are more)."""
    ascending = page.order == "asc"
    if after is not None:
        stmt = stmt.where(column > after if ascending else column < after)
    return stmt.order_by(column.asc() if ascending else column.desc()).limit(page.limit + 1)


async def item_page(
    page: PageRequest,
    *,
    anchor: Callable[[str], Awaitable[int | None]],
    fetch: Callable[[int | None], Awaitable[Sequence[Any]]],
    unknown_after: str,
) -> dict[str, Any]:
    """One page of items kept in order by a number (a conversation's positions, a response's input ordinals):
    `anchor` finds the `after` item's number (None: not there, a 400 naming `after` with `unknown_after`), `fetch`
    reads up to limit + 1 rows (id, status, body) past it, the extra one telling whether there are more."""
    after = None
    if page.after is not None:
        after = await anchor(page.after)
        if after is None:
            raise InvalidRequest(unknown_after, param="after")
    rows = await fetch(after)
    data = [item_view(row.id, row.status, row.body) for row in rows[: page.limit]]
    return item_list(data, has_more=len(rows) > page.limit)
