"""Query parameters of the admin lists, checked strictly: an operator who mistypes a filter gets a 400 naming it,
not a silently unfiltered list. Time ranges are half-open (`*_after` inclusive, `*_before` exclusive), so
consecutive ranges tile time without gaps or overlaps."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.admin.cursor import Keyset, decode_cursor
from service.errors import InvalidRequest
from service.metadata import MAX_KEY_LENGTH, MAX_PAIRS, MAX_VALUE_LENGTH
from service.pagination import PageRequest, parse_page
from service.responses.status import Status

RESPONSE_STATUSES = tuple(status.value for status in Status)
MAX_TEXT_PARAM = 500
_METADATA_PARAM = re.compile(r"^metadata\[(?P<key>[^\[\]]+)\]$")
_EPOCH = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass(frozen=True)
class ConversationFilters:
    tenant: str | None = None
    model: str | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    q: str | None = None


@dataclass(frozen=True)
class ThreadFilters(ConversationFilters):
    kind: str | None = None  # conversation | chain; both when None


@dataclass(frozen=True)
class ResponseFilters:
    tenant: str | None = None
    model: str | None = None
    status: str | None = None
    conversation: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    q: str | None = None


@dataclass(frozen=True)
class TimeRange:
    created_after: datetime | None = None
    created_before: datetime | None = None


class _Params:
    """The request's query parameters; each may appear once, and any left unread when done is an error."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs:
            if name in self._values:
                raise InvalidRequest(f"Query parameter '{name}' was given more than once", param=name)
            self._values[name] = value
        self._read: set[str] = set()

    def text(self, name: str) -> str | None:
        self._read.add(name)
        value = self._values.get(name, "").strip()
        if not value:
            return None
        if len(value) > MAX_TEXT_PARAM or "\x00" in value:
            raise InvalidRequest(f"{name} must be at most {MAX_TEXT_PARAM} characters, without U+0000", param=name)
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is not None and value not in allowed:
            raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}; got {value!r}", param=name)
        return value

    def time(self, name: str) -> datetime | None:
        value = self.text(name)
        return None if value is None else parse_time(name, value)

    def metadata(self) -> dict[str, str]:
        wanted: dict[str, str] = {}
        for name, value in self._values.items():
            match = _METADATA_PARAM.match(name)
            if match is None:
                continue
            self._read.add(name)
            key = match["key"]
            if len(key) > MAX_KEY_LENGTH or len(value) > MAX_VALUE_LENGTH or "\x00" in key + value:
                raise InvalidRequest(
                    f"{name}: keys are at most {MAX_KEY_LENGTH} and values at most {MAX_VALUE_LENGTH} characters, "
                    "without U+0000",
                    param=name,
                )
            wanted[key] = value
        if len(wanted) > MAX_PAIRS:
            raise InvalidRequest(f"At most {MAX_PAIRS} metadata[KEY] filters can be combined", param="metadata")
        return wanted

    def keyset(self, kind: str) -> Keyset:
        self._read.add("limit")
        limit = parse_page(None, self._values.get("limit"), None).limit
        cursor = self.text("cursor")
        return Keyset(limit=limit, after=None if cursor is None else decode_cursor(kind, cursor))

    def item_page(self) -> PageRequest:
        self._read.update(("after", "limit", "order"))
        return parse_page(self.text("after"), self._values.get("limit"), self.text("order") or "asc")

    def finish(self) -> None:
        unknown = sorted(set(self._values) - self._read)
        if unknown:
            raise InvalidRequest(
                f"Unknown query parameter '{unknown[0]}'; accepted here: {', '.join(sorted(self._read))}",
                param=unknown[0],
            )


def parse_time(name: str, raw: str) -> datetime:
    """Unix seconds or ISO 8601; a time without an offset is UTC."""
    try:
        if _EPOCH.match(raw):
            return datetime.fromtimestamp(float(raw), tz=UTC)
        value = datetime.fromisoformat(raw)
        # In UTC, as PostgreSQL will compare it: a time at the edge of year 1 or 9999 may fall outside.
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(
            f"{name} must be Unix seconds or an ISO 8601 date-time (e.g. 2026-11-25T10:00:00Z) between the years "
            f"1 and 9999 in UTC; got {raw!r}",
            param=name,
        ) from None


def _listing_filters(params: _Params) -> dict[str, Any]:
    """The filters both thread listings take (conversations alone, and threads of both kinds)."""
    return {
        "tenant": params.text("tenant"),
        "model": params.text("model"),
        "status": params.choice("status", RESPONSE_STATUSES),
        "created_after": params.time("created_after"),
        "created_before": params.time("created_before"),
        "updated_after": params.time("updated_after"),
        "updated_before": params.time("updated_before"),
        "metadata": params.metadata(),
        "q": params.text("q"),
    }


def conversation_query(pairs: Iterable[tuple[str, str]]) -> tuple[ConversationFilters, Keyset]:
    params = _Params(pairs)
    filters = ConversationFilters(**_listing_filters(params))
    keyset = params.keyset("conversations")
    params.finish()
    return filters, keyset


THREAD_KINDS = ("conversation", "chain")


def thread_query(pairs: Iterable[tuple[str, str]]) -> tuple[ThreadFilters, Keyset]:
    params = _Params(pairs)
    kind = params.choice("kind", THREAD_KINDS)
    filters = ThreadFilters(kind=kind, **_listing_filters(params))
    keyset = params.keyset("threads")
    params.finish()
    return filters, keyset


def thread_detail_query(thread_id: str, pairs: Iterable[tuple[str, str]]) -> Keyset:
    """A page of the thread's responses: limit, cursor (the previous page's next_cursor)."""
    params = _Params(pairs)
    keyset = params.keyset(f"thread {thread_id}")
    params.finish()
    return keyset


def response_query(pairs: Iterable[tuple[str, str]]) -> tuple[ResponseFilters, Keyset]:
    params = _Params(pairs)
    filters = ResponseFilters(
        tenant=params.text("tenant"),
        model=params.text("model"),
        status=params.choice("status", RESPONSE_STATUSES),
        conversation=params.text("conversation"),
        created_after=params.time("created_after"),
        created_before=params.time("created_before"),
        q=params.text("q"),
    )
    keyset = params.keyset("responses")
    params.finish()
    return filters, keyset


def detail_query(pairs: Iterable[tuple[str, str]]) -> PageRequest:
    params = _Params(pairs)
    page = params.item_page()
    params.finish()
    return page


def time_range_query(pairs: Iterable[tuple[str, str]]) -> TimeRange:
    params = _Params(pairs)
    found = TimeRange(params.time("created_after"), params.time("created_before"))
    params.finish()
    return found


def tenant_query(pairs: Iterable[tuple[str, str]]) -> str | None:
    params = _Params(pairs)
    tenant = params.text("tenant")
    params.finish()
    return tenant
