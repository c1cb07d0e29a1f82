"""Opaque keyset cursors for the admin lists: urlsafe base64 of ["list name", "sort timestamp", "row id"].

A cursor is the sort key of the last row a page showed; the next page starts strictly after it. Rows inserted
meanwhile sort before it (newer), so they cannot shift later pages: nothing is skipped or repeated. The list
name stops a cursor from one list being replayed against another.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import ARRAY, Integer, Select, Text, bindparam, cast, func, select, true, tuple_
from sqlalchemy.sql.elements import BindParameter

from service.errors import InvalidRequest

_MAX_CURSOR_LENGTH = 512


@dataclass(frozen=True)
class Keyset:
    limit: int
    after: tuple[datetime, str] | None = None


def page_rows() -> BindParameter[int]:
    """A page's rows to read: the page's size plus one, which tells whether there is a next page (bound by
    name, admin/statements.py)."""
    return bindparam("page", type_=Integer)


def after_keyset(stmt: Select[Any], at: Any, row_id: Any, keyset: Keyset) -> Select[Any]:
    """`stmt`'s rows that sort after the keyset's cursor, if any (bound by name, admin/statements.py)."""
    if keyset.after is None:
        return stmt
    after = tuple_(bindparam("after_at", type_=at.type), bindparam("after_id", type_=row_id.type))
    return stmt.where(tuple_(at, row_id) < after)


def newest_first(stmt: Select[Any], at: Any, row_id: Any, keyset: Keyset) -> Select[Any]:
    """The page of `stmt` after the keyset, newest first: the first rows of one (at, id) index range."""
    return after_keyset(stmt, at, row_id, keyset).order_by(at.desc(), row_id.desc()).limit(page_rows())


def probed_page(ids: Any, stmt: Select[Any], at: Any, row_id: Any, keyset: Keyset) -> Select[Any]:
    """The page of `stmt` among the rows whose ids are in `ids` (an array expression, without repeats), newest
    first: each id probed by primary key (a LATERAL subquery with LIMIT 1 stays one index probe per id), then
    the few found sorted. For candidates found without walking the list's index; a walk of it checking
    `id = ANY(array)` would compare every row walked with every id, and the planner picks between the two on
    its estimates."""
    candidate = select(func.unnest(cast(ids, ARRAY(Text))).label("id")).subquery("candidate")
    probe = after_keyset(stmt, at, row_id, keyset).where(row_id == candidate.c.id).limit(1).lateral("probed")
    return (
        select(probe)
        .select_from(candidate.join(probe, true()))
        .order_by(probe.c[at.name].desc(), probe.c[row_id.name].desc())
        .limit(page_rows())
    )


def encode_cursor(kind: str, at: datetime, row_id: str) -> str:
    raw = msgspec.json.encode([kind, at.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _malformed(detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"cursor is not valid here ({detail}); pass back the next_cursor of the previous page of this list",
        param="cursor",
        code="invalid_cursor",
    )


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise _malformed("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _malformed("not a cursor") from None
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(part, str) for part in value)):
        raise _malformed("not a cursor")
    if value[0] != kind:
        raise _malformed(f"it belongs to the {value[0]!r} list")
    try:
        at = datetime.fromisoformat(value[1])
        if at.tzinfo is None:
            raise _malformed("bad sort key")
        at = at.astimezone(UTC)  # a forged time at the edge of year 1 or 9999 may not exist in UTC
    except (ValueError, OverflowError):
        raise _malformed("bad timestamp") from None
    if not value[2] or "\x00" in value[2]:
        raise _malformed("bad sort key")
    return at, value[2]
