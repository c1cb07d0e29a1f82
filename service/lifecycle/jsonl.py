"""The JSON Lines form of a conversation: line 1 is the conversation (`{"object": "conversation", "id",
"created_at", "metadata"}`), then one line per item, in order, each exactly as the items API shows it. An export
also ends each conversation with `{"object": "conversation.end", "id", "items": N}`, and an operators' export of
many ends the file with `{"object": "export.end", "conversations": N}`; their headers say so (`ends_with`,
`file_ends_with`), so that an import refuses a file cut short at a line boundary (service/lifecycle/ends.py)
rather than taking it for a whole, shorter one. A file written by hand may leave them out.

Parsing names the 1-based line of the first bad line (the header is line 1), so a client can fix its file. Blank
lines and a byte order mark are skipped when read, never written."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from service.errors import InvalidRequest
from service.items import INPUT_ITEM_TYPES, check_columns, check_replayable
from service.jsonbody import MAX_JSON_DEPTH, MAX_JSON_VALUES, diagnose, nests_too_deep, too_many_values
from service.metadata import validate_metadata

MEDIA_TYPE = "application/jsonl"
# What clients call JSON Lines in the wild; all of them mean one JSON value per line.
ACCEPTED_MEDIA_TYPES = frozenset(
    {MEDIA_TYPE, "application/x-ndjson", "application/x-jsonlines", "application/jsonlines", "application/json-lines"}
)
_decoder = msgspec.json.Decoder()
encode = msgspec.json.encode
T = TypeVar("T")


@dataclass(frozen=True)
class Header:
    line: int
    created_at: int | None
    metadata: dict[str, str]
    tenant: str | None  # admin exports name each conversation's tenant
    tenant_id: str | None = None  # and its id, which its compaction items are sealed for (lifecycle/resealing.py)
    needs_end: bool = False  # the conversation's lines end with its End line
    file_needs_end: bool = False  # the file's lines end with an ExportEnd line
    id: str | None = None  # the exported conversation's id, which its End line repeats (an import makes a new one)


@dataclass(frozen=True)
class ItemLine:
    line: int
    value: dict[str, Any]


@dataclass(frozen=True)
class Withdrawn:
    """The conversation whose lines came last was deleted while an operators' export of many conversations read
    it: its lines so far are not the whole of it, and an import leaves it out."""

    line: int


# The line such an export writes after that conversation's lines (service/lifecycle/service.py).
WITHDRAWN = "conversation.withdrawn"
CONVERSATION_END = "conversation.end"
EXPORT_END = "export.end"


@dataclass(frozen=True)
class End:
    """A conversation's last line: `items`, the item lines since its header; `id`, the conversation's as its
    header gives it."""

    line: int
    items: int
    id: str | None = None


@dataclass(frozen=True)
class ExportEnd:
    """An operators' export's last line: `conversations`, the conversations in the file (withdrawn ones aside)."""

    line: int
    conversations: int


Entry = Header | ItemLine | Withdrawn | End | ExportEnd


def bad_line(number: int, message: str) -> InvalidRequest:
    return InvalidRequest(f"Line {number}: {message}", param=f"line {number}", code="invalid_jsonl")


def header_line(row: Any, tenant: str | None = None) -> bytes:
    header: dict[str, Any] = {
        "object": "conversation",
        "id": row.id,
        "created_at": int(row.created_at.timestamp()),
        "metadata": row.metadata,
    }
    header["ends_with"] = CONVERSATION_END
    if tenant is not None:  # an operators' export of many
        header["tenant"] = tenant
        header["tenant_id"] = row.tenant_id
        header["file_ends_with"] = EXPORT_END
    return encode(header) + b"\n"


def end_line(row: Any, items: int) -> bytes:
    return encode({"object": CONVERSATION_END, "id": row.id, "items": items}) + b"\n"


def export_end_line(conversations: int) -> bytes:
    return encode({"object": EXPORT_END, "conversations": conversations}) + b"\n"


def withdrawn_line(row: Any) -> bytes:
    return encode({"object": WITHDRAWN, "id": row.id, "reason": "deleted while it was exported"}) + b"\n"


def _why_not_json(raw: bytes, error: Exception) -> str:
    """What a request body would be told (msgspec calls a lone surrogate "truncated" input; the body's diagnosis
    names it), said of the line: "not valid JSON: ...", "not valid UTF-8 (byte N)", "contains a lone UTF-16
    surrogate ..."."""
    reason = diagnose(raw, error).message.removeprefix("Request body ").removeprefix("is ")
    return reason.replace("(line 1, column ", "(column ")  # a line is one line of JSON


def _decode(number: int, raw: bytes) -> dict[str, Any]:
    # As for any request body: every later reader of the item (its replay, a reference to it) stays far from
    # Python's recursion limit.
    if nests_too_deep(raw):
        raise bad_line(number, f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects")
    if too_many_values(raw):
        raise bad_line(number, f"holds more than {MAX_JSON_VALUES} keys and array elements")
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise bad_line(number, _why_not_json(raw, exc)) from None
    if not isinstance(value, dict):
        raise bad_line(number, "must be a JSON object")
    return value


# 9999-12-31T23:59:59Z: PostgreSQL's timestamps go further, but no other date makes sense for a conversation.
_LAST_TIMESTAMP = 253_402_300_799


def _header(number: int, value: dict[str, Any]) -> Header:
    if value.get("object") != "conversation":
        raise bad_line(number, 'a conversation starts with its header {"object": "conversation", ...}')
    created_at = value.get("created_at")
    if created_at is not None and (
        not isinstance(created_at, int) or isinstance(created_at, bool) or not 0 <= created_at <= _LAST_TIMESTAMP
    ):
        raise bad_line(number, "created_at must be a Unix timestamp in seconds, before the year 10000")
    try:
        metadata = validate_metadata(value.get("metadata"))
    except InvalidRequest as exc:
        raise bad_line(number, exc.message) from None
    tenant = value.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant or "\x00" in tenant):
        raise bad_line(number, "tenant must be a non-empty string")
    tenant_id = value.get("tenant_id")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise bad_line(number, "tenant_id must be a string")
    for field, ending in (("ends_with", CONVERSATION_END), ("file_ends_with", EXPORT_END)):
        if value.get(field, ending) != ending:
            raise bad_line(number, f"{field} must be {ending!r} (or left out)")
    return Header(
        number,
        created_at,
        metadata,
        tenant,
        tenant_id,
        needs_end="ends_with" in value,
        file_needs_end="file_ends_with" in value,
        id=_exported_id(value),
    )


def _exported_id(value: dict[str, Any]) -> str | None:
    """A header's or end line's `id`, compared and never stored: files written by hand may give any, or none."""
    exported_id = value.get("id")
    return exported_id if isinstance(exported_id, str) else None


def _count(number: int, value: dict[str, Any], field: str) -> int:
    """An end line's count, which is what it is there for."""
    count = value.get(field)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise bad_line(number, f"an end line's {field} must be a whole number")
    return count


def _item(number: int, value: dict[str, Any]) -> ItemLine:
    if "type" not in value and "role" in value:
        value = {**value, "type": "message"}  # OpenAI's EasyInputMessage, as the items API takes it
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise bad_line(number, "an item needs a string 'type'")
    for field in ("id", "status"):
        if field in value and not isinstance(value[field], str):
            raise bad_line(number, f"'{field}' must be a string")
    if "id" not in value and kind not in INPUT_ITEM_TYPES:
        # Written by hand, checked as the items API checks a client's item: an exported one (with its id) may be
        # of any type an upstream answered with.
        raise bad_line(number, f"type {kind[:40]!r} is not an input item type")
    if kind == "message":
        if value.get("role") not in ("user", "assistant", "system", "developer"):
            raise bad_line(number, "a message's role must be user, assistant, system or developer")
        if not isinstance(value.get("content"), str | list):
            raise bad_line(number, "a message's content must be a string or an array of content parts")
    try:
        # What the items API refuses in these fields, a later turn could not send upstream either.
        check_columns(value, kind, "item")
        # An exported item carries its id: it was stored once, maybe before today's checks, and moves as it is.
        # One without (written by hand) is checked as the items API checks a client's.
        check_replayable(value, "item", part_fields="id" not in value)
    except InvalidRequest as exc:
        raise bad_line(number, exc.message) from None
    return ItemLine(number, value)


def entries(lines: Iterable[bytes], *, many: bool) -> Iterator[Entry]:
    """Every line in file order, one at a time, end lines included (ends.whole checks them). With `many`, a
    file may hold several conversations, each starting with its header (and any of them withdrawn after its
    lines); otherwise only line 1 may be one. Blank lines, and a byte order mark before line 1, are skipped
    (editors and other tools write them); the errors name lines as the file numbers them."""
    first = True
    for number, read in enumerate(lines, start=1):
        line = read.removeprefix(codecs.BOM_UTF8) if number == 1 else read
        if not line.strip():
            continue
        value = _decode(number, line)
        kind = None if "type" in value else value.get("object")
        if kind == WITHDRAWN and not first:
            if not many:
                raise bad_line(number, "this conversation was deleted while it was exported: the file is not all of it")
            yield Withdrawn(number)
        elif kind == CONVERSATION_END and not first:
            yield End(number, _count(number, value, "items"), _exported_id(value))
        elif kind == EXPORT_END and not first:
            yield ExportEnd(number, _count(number, value, "conversations"))
        elif first or (many and value.get("object") == "conversation"):
            yield _header(number, value)
        elif value.get("object") == "conversation" and "type" not in value:
            raise bad_line(
                number,
                "a second conversation's header: this import takes one conversation (an operators' import, "
                "POST /admin/tenants/{tenant}/import or convstore import, takes many)",
            )
        else:
            yield _item(number, value)
        first = False
    if first:
        raise bad_line(1, "the file is empty; its first line must be the conversation's header")


def parse(raw: bytes, *, many: bool) -> Iterator[Entry]:
    return entries(raw.split(b"\n"), many=many)


async def in_worker_thread(
    entries: Iterable[T], *, weight: Callable[[T], int] = lambda _: 1, batch: int = 1000
) -> AsyncIterator[T]:
    """`entries` (a lazy parse) advanced in a worker thread, about `batch` lines at a time (`weight`: the lines a
    value holds). Parsing a large file on the event loop would hold every other request for as long; in a thread
    it yields the interpreter to the loop at each switch interval. Batches spare a thread hop per line."""
    iterator = iter(entries)

    def take() -> list[T]:
        taken: list[T] = []
        lines = 0
        for value in iterator:
            taken.append(value)
            lines += weight(value)
            if lines >= batch:
                break
        return taken

    while taken := await asyncio.to_thread(take):
        for value in taken:
            yield value
