"""The admin lists' statements, built once per shape and run with each request's values.

Building a search page's statement (a few dozen subqueries and CTEs) cost the service more time than
PostgreSQL spends running the page for a common word. Two requests' statements differ only in which filters
are set, and in a status's or a kind's value (which change the SQL): that is the shape. Each shape's statement
is built once, with a named bind parameter for every value, and every request runs it with its values
(`values()`); SQLAlchemy then finds its compiled SQL at once, the statement being the same object.

The names, used by the list builders (admin/repository.py, threads/repository.py, admin/search.py and
admin/cursor.py): tenant_id, model, conversation, created_after, created_before, updated_after, updated_before,
metadata, q, walk_first, page (the page's size plus one), after_at and after_id (the cursor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.admin.cursor import Keyset

# Filters whose value, not only whether they are set, changes the statement.
_BY_VALUE = ("status", "kind")
# Plenty for every combination of filters in use; cleared whole past it rather than tracking use.
_MAX_SHAPES = 512


def shape(filters: Any, tenant_id: str | None, keyset: Keyset) -> tuple[Any, ...]:
    """Which filters are set (a status and a kind by value), whether a tenant was resolved and a cursor given."""
    return (
        type(filters).__name__,
        tenant_id is not None,
        keyset.after is not None,
        *(
            (
                field.name,
                getattr(filters, field.name) if field.name in _BY_VALUE else bool(getattr(filters, field.name)),
            )
            for field in dataclasses.fields(filters)
            if field.name != "tenant"
        ),
    )


def values(filters: Any, tenant_id: str | None, keyset: Keyset, walk_first: int = 0) -> dict[str, Any]:
    """The bind parameters of a list statement for this request (those its shape has no use for are ignored)."""
    found: dict[str, Any] = {"tenant_id": tenant_id, "page": keyset.limit + 1, "walk_first": walk_first}
    for name in ("model", "conversation", "created_after", "created_before", "updated_after", "updated_before", "q"):
        found[name] = getattr(filters, name, None)
    found["metadata"] = getattr(filters, "metadata", None) or None
    if keyset.after is not None:
        found["after_at"], found["after_id"] = keyset.after
    return found


class Statements:
    """One list's statements by shape; `build(filters, tenant_id, keyset)` must read from its arguments only
    which filters are set and the values in _BY_VALUE, and bind every other value by name."""

    def __init__(self, build: Callable[[Any, str | None, Keyset], Select[Any]]) -> None:
        self._build = build
        self._built: dict[tuple[Any, ...], Select[Any]] = {}

    def get(self, filters: Any, tenant_id: str | None, keyset: Keyset) -> Select[Any]:
        key = shape(filters, tenant_id, keyset)
        statement = self._built.get(key)
        if statement is None:
            if len(self._built) >= _MAX_SHAPES:
                self._built.clear()
            statement = self._built[key] = self._build(filters, tenant_id, keyset)
        return statement

    def bound(self, filters: Any, tenant_id: str | None, keyset: Keyset, walk_first: int = 0) -> Select[Any]:
        """The statement with this request's values bound in (to print its plan, or to run it as is).
        `tenant_id` is the resolved `filters.tenant`; `walk_first`, for a search, is search.walk_budget(...)."""
        return self.get(filters, tenant_id, keyset).params(values(filters, tenant_id, keyset, walk_first))

    async def page(
        self, conn: AsyncConnection, filters: Any, tenant_id: str | None, keyset: Keyset, walk_first: int = 0
    ) -> list[Any]:
        """The page's rows: the shape's statement run with this request's values."""
        statement = self.get(filters, tenant_id, keyset)
        return list((await conn.execute(statement, values(filters, tenant_id, keyset, walk_first))).all())
