"""Shapes shared by every domain's schemas: list pages and the query parameters of OpenAI-style item lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# An item exactly as stored (a message, function call, reasoning item, ...): its JSON is never re-shaped, so its
# schema is open. Each item has at least an `id` and a `type`.
ItemObject = dict[str, Any]
Metadata = Annotated[
    dict[str, str],
    msgspec.Meta(description="Up to 16 pairs; keys at most 64 characters, values at most 512"),
]


class ItemPageQuery(msgspec.Struct):
    after: str | None = msgspec.field(default=None)
    limit: Annotated[int, msgspec.Meta(ge=1, le=100, description="Items per page")] = 20
    order: Annotated[Literal["asc", "desc"], msgspec.Meta(description="By position in the thread")] = "desc"
    include: Annotated[
        list[str] | None, msgspec.Meta(description="Checked against OpenAI's IncludeEnum; what is stored is shown")
    ] = None
