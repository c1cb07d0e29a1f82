"""Conversation items: validating what clients send, keeping what the upstream returns exactly, and the
API view of a stored item. An item's `body` is its exact JSON text, which is what goes upstream next turn."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgspec

from service.context.tokens import item_tokens
from service.errors import InvalidRequest
from service.ids import new_id
from service.media import check_media_sources
from service.rendering import client_item

_encode = msgspec.json.encode

INPUT_ROLES = frozenset({"user", "system", "developer"})
INPUT_PART_TYPES = frozenset({"input_text", "input_image", "input_file", "input_audio", "input_video"})
OUTPUT_PART_TYPES = frozenset({"output_text", "refusal"})
ID_PREFIX_BY_TYPE = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "web_search_call": "ws",
    "file_search_call": "fs",
    "image_generation_call": "ig",
    "code_interpreter_call": "ci",
    "compaction": "cmp",
}
# What a client may send as an item: OpenAI's InputItem types (its spec) and item references. An upstream's output
# items are kept whatever their type (a newer one included) and replay from storage, or by reference; an unknown
# type sent as input is refused here, as OpenAI refuses it, rather than stored into a conversation whose every
# later turn the upstream would then refuse. OpenAI's `compaction_trigger` is not one: it asks a turn to compact
# (service/responses/requests.py takes it off the turn's input) and is never stored.
INPUT_ITEM_TYPES = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "compaction",
        "custom_tool_call",
        "custom_tool_call_output",
        "web_search_call",
        "file_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "computer_call",
        "computer_call_output",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "additional_tools",
        "program",
        "program_output",
        "item_reference",
    }
)
# Item types whose upstream schema requires an id: one is minted when the client left it out.
_ID_REQUIRED_IN_BODY = frozenset({"function_call", "reasoning"})
_COLUMN_FIELDS = ("id", "type", "role", "status")
MAX_COLUMN_CHARS = 256  # OpenAI's ids are about 50 characters
ITEM_REFERENCE = "item_reference"


@dataclass(frozen=True)
class NewItem:
    id: str
    type: str
    role: str | None
    status: str
    body: str
    text_content: str
    token_count: int  # what it costs a model as input: estimated here, exact once OpenRouter reported usage
    # The id came with the item (from the client, or inside the stored item a reference names) rather than being
    # minted here, so the conversation or chain the item joins may hold it already.
    id_given: bool = False


def item_arrays(items: Sequence[NewItem]) -> dict[str, list[Any]]:
    """The item columns a statement writes, as parallel arrays for unnest(): one INSERT for any number."""
    return {
        "ids": [i.id for i in items],
        "types": [i.type for i in items],
        "roles": [i.role for i in items],
        "statuses": [i.status for i in items],
        "bodies": [i.body for i in items],
        "texts": [i.text_content for i in items],
        "token_counts": [i.token_count for i in items],
    }


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _text_of_parts(parts: Any) -> str:
    if not isinstance(parts, list):
        return parts if isinstance(parts, str) else ""
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    return "\n".join(t for t in texts if isinstance(t, str))


# Search covers an item's first this many characters: PostgreSQL refuses a tsvector over 1 MB, which the
# stored search column of a ~1 MB answer of distinct words would reach, and the whole turn would fail to store.
SEARCH_TEXT_CHARS = 100_000


def extract_text(item: dict[str, Any]) -> str:
    """Plain text for search and titles (the first SEARCH_TEXT_CHARS characters); NUL removed because
    PostgreSQL text cannot hold it."""
    kind = item.get("type")
    if kind == "message":
        text = _text_of_parts(item.get("content"))
    elif kind == "function_call":
        text = f"{item.get('name', '')} {item.get('arguments', '')}"
    elif kind == "function_call_output":
        text = _text_of_parts(item.get("output"))
    elif kind == "reasoning":
        text = _text_of_parts(item.get("summary"))
    else:
        text = ""
    return text.replace("\x00", "")[:SEARCH_TEXT_CHARS]


def _check_parts(parts: list[Any], allowed: frozenset[str] | None, param: str, *, fields: bool = True) -> None:
    """`allowed`: the part types accepted; None: any string. `fields`: check the fields OpenAI types too (not
    for an exported item an import moves, which it holds as it was once accepted: check_replayable)."""
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _fail(f"Content part {where} must be an object", where)
        kind = part.get("type")
        if allowed is None and not isinstance(kind, str):
            raise _fail(f"Content part {where} needs a string 'type'", f"{where}.type")
        if allowed is not None and not (isinstance(kind, str) and kind in allowed):
            raise _fail(
                f"Content part {where} has type {kind!r}; expected one of {', '.join(sorted(allowed))}",
                f"{where}.type",
            )
        if kind in {"input_text", "output_text"} and not isinstance(part.get("text"), str):
            raise _fail(f"Content part {where} needs a string 'text'", f"{where}.text")
        if fields:
            _check_part_fields(part, kind, where)


# Content part fields OpenAI's schema types, checked where the client sent them: stored, a wrong type would go
# upstream on every later turn of the thread (and be shown as it is).
_PART_STRINGS = {
    "input_image": ("image_url", "file_id", "detail"),
    "input_file": ("file_id", "file_data", "file_url", "filename"),
}
_FILE_SOURCES = ("file_id", "file_data", "file_url")
_IMAGE_SOURCES = ("image_url", "file_id")
_IMAGE_DETAILS = ("low", "high", "auto", "original")  # a tuple: a detail of any JSON type can be looked up
_FILE_DETAILS = ("auto", "low", "high")
# What a function's output array holds (OpenAI's FunctionAndCustomToolCallOutput).
_TOOL_OUTPUT_PART_TYPES = frozenset({"input_text", "input_image", "input_file"})


def _check_part_fields(part: dict[str, Any], kind: Any, where: str) -> None:
    for field in _PART_STRINGS.get(kind, ()):
        if field in part and part[field] is not None and not isinstance(part[field], str):
            raise _fail(f"Content part {where}.{field} must be a string", f"{where}.{field}")
    if kind == "input_file" and not any(isinstance(part.get(field), str) for field in _FILE_SOURCES):
        raise _fail(f"Content part {where} needs one of {', '.join(_FILE_SOURCES)}", where)
    if kind == "input_image" and not any(isinstance(part.get(field), str) for field in _IMAGE_SOURCES):
        raise _fail(f"Content part {where} needs one of {', '.join(_IMAGE_SOURCES)}", where)
    if kind == "input_image" and part.get("detail") is not None and part["detail"] not in _IMAGE_DETAILS:
        raise _fail(f"Content part {where}.detail must be one of {', '.join(_IMAGE_DETAILS)}", f"{where}.detail")
    if kind == "input_file" and part.get("detail") is not None and part["detail"] not in _FILE_DETAILS:
        raise _fail(f"Content part {where}.detail must be one of {', '.join(_FILE_DETAILS)}", f"{where}.detail")
    if kind in ("input_image", "input_file"):
        check_media_sources(part, where)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not (
            isinstance(audio, dict) and isinstance(audio.get("data"), str) and isinstance(audio.get("format"), str)
        ):
            raise _fail(f"Content part {where}.input_audio needs a string data and format", f"{where}.input_audio")
    if kind == "refusal" and not isinstance(part.get("refusal"), str):
        raise _fail(f"Content part {where} needs a string 'refusal'", f"{where}.refusal")
    for field in ("annotations", "logprobs"):
        entries = part.get(field)
        if field in part and not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            raise _fail(f"Content part {where}.{field} must be an array of objects", f"{where}.{field}")


def text_parts(role: str, text: str) -> list[dict[str, Any]]:
    """A message's string content as the one content part OpenAI's Message holds: prior assistant turns go
    upstream as output messages, whose parts are output_text."""
    if role == "assistant":
        return [{"type": "output_text", "text": text, "annotations": []}]
    return [{"type": "input_text", "text": text}]


def as_output_parts(parts: list[Any]) -> list[Any]:
    """An assistant message's parts (checked: an input_text part has a string text) as they go upstream: prior
    assistant turns are output messages, whose parts are output_text."""
    return [
        {"type": "output_text", "text": p["text"], "annotations": []}
        if isinstance(p, dict) and p.get("type") == "input_text"
        else p
        for p in parts
    ]


def _normalize_message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    content = item.get("content")
    if role == "assistant":
        if isinstance(content, str):
            content = text_parts(role, content)
        elif isinstance(content, list):
            _check_parts(content, OUTPUT_PART_TYPES | INPUT_PART_TYPES, f"{param}.content")
            content = as_output_parts(content)
        else:
            raise _fail(f"{param}.content must be a string or an array of content parts", f"{param}.content")
        # OpenRouter requires id and status on assistant messages in the history.
        return {
            **item,
            "type": "message",
            "content": content,
            "id": item.get("id") or new_id("msg"),
            "status": item.get("status") or "completed",
        }
    if not (isinstance(role, str) and role in INPUT_ROLES):
        raise _fail(f"{param}.role must be one of user, assistant, system, developer (got {role!r})", f"{param}.role")
    if isinstance(content, str):
        content = text_parts(role, content)
    elif isinstance(content, list):
        _check_parts(content, INPUT_PART_TYPES, f"{param}.content")
        content = _with_image_details(content)
    else:
        raise _fail(f"{param}.content must be a string or an array of content parts", f"{param}.content")
    return {**item, "type": "message", "content": content}


def _with_image_details(parts: list[Any]) -> list[Any]:
    """Images with a `detail`: OpenRouter's schema requires one where OpenAI's takes none (or null) for `auto`, as
    OpenAI's own examples send them. Stored so, as string content is stored as its part: replayed as stored."""
    if not any(isinstance(p, dict) and p.get("type") == "input_image" and p.get("detail") is None for p in parts):
        return parts
    return [
        {**p, "detail": "auto"}
        if isinstance(p, dict) and p.get("type") == "input_image" and p.get("detail") is None
        else p
        for p in parts
    ]


# Items with fields the upstream's schema requires (a replay sends them as stored): _check_tool_item checks them.
_TOOL_ITEM_TYPES = frozenset({"function_call", "function_call_output", "custom_tool_call_output", "reasoning"})
# Outputs whose `output` may be an array of input parts (OpenAI's FunctionAndCustomToolCallOutput).
_PART_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
# OpenAI's status of these input items (other tool calls have their own words, e.g. a web search's `searching`).
ITEM_STATUSES = frozenset({"in_progress", "completed", "incomplete"})
_ITEM_STATUS_TYPES = frozenset({"message", *_TOOL_ITEM_TYPES})


def _check_tool_item(item: dict[str, Any], kind: str, param: str) -> None:
    if kind == "function_call":
        for field in ("call_id", "name", "arguments"):
            if not isinstance(item.get(field), str):
                raise _fail(f"{param}.{field} is required and must be a string", f"{param}.{field}")
    elif kind in _PART_OUTPUTS:
        if not isinstance(item.get("call_id"), str) or not item["call_id"]:
            raise _fail(f"{param}.call_id is required for {kind}", f"{param}.call_id")
        output = item.get("output")
        if not isinstance(output, str | list):
            raise _fail(f"{param}.output must be a string or an array of content parts", f"{param}.output")
        if isinstance(output, list):
            _check_parts(output, _TOOL_OUTPUT_PART_TYPES, f"{param}.output")
    elif kind == "reasoning":
        summary = item.get("summary")
        if not isinstance(summary, list):
            raise _fail(f"{param}.summary is required and must be an array", f"{param}.summary")
        for index, part in enumerate(summary):
            if not (
                isinstance(part, dict) and part.get("type") == "summary_text" and isinstance(part.get("text"), str)
            ):
                where = f"{param}.summary[{index}]"
                raise _fail(f"{where} must be a summary_text part with a string text", where)
        if item.get("encrypted_content") is not None and not isinstance(item["encrypted_content"], str):
            raise _fail(f"{param}.encrypted_content must be a string", f"{param}.encrypted_content")
        content = item.get("content")
        if content is not None and not (
            isinstance(content, list)
            and all(
                isinstance(p, dict) and p.get("type") == "reasoning_text" and isinstance(p.get("text"), str)
                for p in content
            )
        ):
            raise _fail(
                f"{param}.content must be an array of reasoning_text parts with a string text", f"{param}.content"
            )


def check_columns(item: dict[str, Any], kind: str, param: str) -> None:
    """What any item a client writes (input, or a line of an import) must hold in the fields also stored as
    columns (listing, lookup by id), and in the status the upstream's schema gives a message or tool item."""
    for field in _COLUMN_FIELDS:
        # PostgreSQL text cannot hold U+0000; the id is in indexes, whose entries PostgreSQL caps at about 2.7 kB.
        if isinstance(item.get(field), str) and "\x00" in item[field]:
            raise _fail(f"{param}.{field} cannot contain U+0000", f"{param}.{field}")
        if isinstance(item.get(field), str) and len(item[field]) > MAX_COLUMN_CHARS:
            raise _fail(f"{param}.{field} must be at most {MAX_COLUMN_CHARS} characters", f"{param}.{field}")
    if "status" in item and not isinstance(item["status"], str):
        raise _fail(f"{param}.status must be a string", f"{param}.status")
    if kind in _ITEM_STATUS_TYPES and "status" in item and item["status"] not in ITEM_STATUSES:
        raise _fail(
            f"{param}.status must be one of {', '.join(sorted(ITEM_STATUSES))} (got {item['status'][:40]!r})",
            f"{param}.status",
        )


def check_replayable(item: dict[str, Any], param: str, *, part_fields: bool) -> None:
    """An item that joins a conversation as it is (an imported one: of any type, as upstream output is, and kept
    exactly): the fields a later turn sends upstream, where its type is one the upstream's schema describes.
    `part_fields`: a client message's content parts are checked field by field, as the items API checks them (an
    item written by hand: a part the upstream refuses would stop every later turn); an exported item moves as
    the service stored it, some of it before today's checks."""
    kind = item.get("type")
    if kind == ITEM_REFERENCE:
        raise _fail(f"{param} is an item reference; a conversation holds the items themselves", f"{param}.type")
    if kind == "message" and isinstance(item.get("content"), list):
        # An assistant message may carry any part type (and field) an upstream produced; a client's, the input
        # types.
        client = item.get("role") != "assistant"
        allowed = INPUT_PART_TYPES if client else None
        _check_parts(item["content"], allowed, f"{param}.content", fields=client and part_fields)
    elif isinstance(kind, str) and kind in _TOOL_ITEM_TYPES:
        _check_tool_item(item, kind, param)


def _normalize_one(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _fail(f"{param} must be an object", param)
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = "message"
    elif kind is None and "id" in item:
        kind = ITEM_REFERENCE  # OpenAI's ItemReference: `type` is optional, `id` alone names a stored item
    if not isinstance(kind, str) or not kind:
        raise _fail(f"{param}.type is required", f"{param}.type")
    if kind not in INPUT_ITEM_TYPES:
        raise _fail(f"{param}.type {kind!r} is not an input item type", f"{param}.type")
    if "id" in item and not (isinstance(item["id"], str) and item["id"]):
        raise _fail(f"{param}.id must be a non-empty string", f"{param}.id")
    if "id" in item and ("/" in item["id"] or item["id"] in {".", ".."}):
        # The items API addresses an item by its id in the URL path: this one could never be read or deleted.
        raise _fail(f"{param}.id cannot contain '/' nor be '.' or '..'", f"{param}.id")
    check_columns(item, kind, param)
    if kind == "message":
        return _normalize_message(item, param)
    if kind in _TOOL_ITEM_TYPES:
        _check_tool_item(item, kind, param)
        if kind in _PART_OUTPUTS and isinstance(item["output"], list):
            output = _with_image_details(item["output"])
            if output is not item["output"]:
                return {**item, "output": output}
    elif kind == ITEM_REFERENCE:
        if not isinstance(item.get("id"), str):
            raise _fail(f"{param}.id is required for item_reference", f"{param}.id")
        # Resolved to the stored item (see resolve_reference) before anything is written or sent.
        return {"type": ITEM_REFERENCE, "id": item["id"]}
    if kind in _ID_REQUIRED_IN_BODY and "id" not in item:
        return {**item, "id": new_id(ID_PREFIX_BY_TYPE[kind])}
    return item


def _column(value: Any) -> str | None:
    """A field copied to a text column: the body keeps the exact value, the column drops what text cannot hold
    (only upstream items get here with U+0000; client items were refused)."""
    return (value.replace("\x00", "") or None) if isinstance(value, str) else None


def _to_new_item(item: dict[str, Any], *, id_given: bool = False) -> NewItem:
    kind = _column(item["type"]) or "item"
    item_id = _column(item.get("id"))
    return NewItem(
        id=item_id or new_id(ID_PREFIX_BY_TYPE.get(kind, "item")),
        type=kind,
        role=_column(item.get("role")),
        status=_column(item.get("status")) or "completed",
        body=_encode(item).decode(),
        text_content=extract_text(item),
        token_count=item_tokens(item),
        id_given=id_given and item_id is not None,
    )


def duplicate_item(item_id: str, param: str) -> InvalidRequest:
    """OpenAI's answer to an item whose id the input, or the context it joins, holds already: a conversation lists
    its items by id (`after=`), so an id stored twice would make its pages repeat or skip items."""
    return InvalidRequest(
        f"Duplicate item found with id {item_id}. Remove duplicate items from your input and try again.",
        param=param,
    )


def refuse_duplicate_ids(items: Sequence[NewItem], *, param: str) -> None:
    """Raises when two of `items` (references resolved) share an id."""
    seen: set[str] = set()
    for item in items:
        if item.id_given:
            if item.id in seen:
                raise duplicate_item(item.id, param)
            seen.add(item.id)


def normalize_input(value: Any, *, param: str, max_items: int) -> list[NewItem]:
    """Client input (a string or an array of items) as items ready to store. Raises InvalidRequest naming
    the offending field."""
    if isinstance(value, str):
        return [_to_new_item({"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]})]
    if not isinstance(value, list):
        raise _fail(f"{param} must be a string or an array of items", param)
    if len(value) > max_items:
        raise InvalidRequest(
            f"{param} has {len(value)} items; at most {max_items} are allowed",
            param=param,
            code="too_many_items",
        )
    return [
        _to_new_item(_normalize_one(item, f"{param}[{index}]"), id_given=isinstance(item, dict) and "id" in item)
        for index, item in enumerate(value)
    ]


def usable_id(value: Any) -> TypeGuard[str]:
    """An id an item can be stored, listed and addressed by (the items API takes it in a URL path), as a client's
    input is held to: anything else an upstream sends is replaced by one of ours."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_COLUMN_CHARS
        and "\x00" not in value
        and "/" not in value
        and value not in {".", ".."}
    )


def normalize_output(items: Any, *, response_status: str) -> list[NewItem]:
    """Upstream output items, kept as returned (any type, unknown fields kept) but for what the next turn could
    not replay, or the items API could not tell apart: a missing or unusable id, or one another item of this
    output has, is replaced by one of ours; a message or tool item gets a status OpenAI's schema knows, a
    message its content as an array of parts, a function call its call_id and its arguments as text, and a
    reasoning item its summary as summary_text parts."""
    if not isinstance(items, list):
        return []
    result = []
    # Status.COMPLETED spelled out: service/responses imports this module, not the reverse.
    fallback_status = "completed" if response_status == "completed" else "incomplete"
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            continue
        kind = item["type"]
        repaired = dict(item)
        item_id = item.get("id")
        if not usable_id(item_id) or item_id in seen:
            repaired["id"] = new_id(ID_PREFIX_BY_TYPE.get(kind, "item"))
        status = item.get("status")
        unknown = (
            "status" in item
            and kind in _ITEM_STATUS_TYPES
            and not (isinstance(status, str) and status in ITEM_STATUSES)
        )
        if unknown or (not status and (kind == "message" or repaired["id"] != item_id)):
            repaired["status"] = fallback_status
        if kind == "message":
            repaired["content"] = _output_content(item.get("content"))
        elif kind == "function_call":
            _repair_call(repaired)
        elif kind == "reasoning":
            repaired["summary"] = _output_summary(item.get("summary"))
        seen.add(repaired["id"])
        result.append(_to_new_item(item if repaired == item else repaired))
    return result


def with_fresh_ids(items: list[NewItem], taken: Collection[str]) -> None:
    """Gives each item whose id is in `taken` an id of ours, in place (in its body too); what else the upstream
    sent is kept as it came, its token count included."""
    for index, item in enumerate(items):
        if item.id in taken:
            body = msgspec.json.decode(item.body)
            body["id"] = new_id(ID_PREFIX_BY_TYPE.get(item.type, "item"))
            items[index] = dataclasses.replace(item, id=body["id"], body=_encode(body).decode())


def _repair_call(call: dict[str, Any]) -> None:
    """A call the client can answer and the next turn can send back: a call_id of ours when it has none (the
    client answers that one), its arguments as the JSON text OpenAI's schema gives them. A call without a
    function's name is left as it came: no repair could say which function was meant."""
    if not (isinstance(call.get("call_id"), str) and call["call_id"]):
        call["call_id"] = new_id("call")
    arguments = call.get("arguments")
    if not isinstance(arguments, str):
        call["arguments"] = "" if arguments is None else _encode(arguments).decode()


def _output_summary(summary: Any) -> list[Any]:
    """The summary_text parts as they came, plain strings as the parts they stand for; anything else left out."""
    kept: list[Any] = []
    for part in summary if isinstance(summary, list) else []:
        if isinstance(part, str):
            kept.append({"type": "summary_text", "text": part})
        elif isinstance(part, dict) and part.get("type") == "summary_text" and isinstance(part.get("text"), str):
            kept.append(part)
    return kept


def _output_content(content: Any) -> list[Any]:
    if isinstance(content, str):
        return text_parts("assistant", content)
    if not isinstance(content, list):
        return []
    return [part for part in content if isinstance(part, dict) and isinstance(part.get("type"), str)]


def resolve_reference(stored_body: str) -> NewItem:
    """The item an item_reference names, as a new item carrying the stored JSON text unchanged (so it replays
    byte-exact). It keeps the id inside that text; an item whose text has none (input messages) gets a new id,
    so that ids stay unique within a conversation."""
    stored = msgspec.json.decode(stored_body)
    return dataclasses.replace(_to_new_item(stored, id_given="id" in stored), body=stored_body)


def item_view(item_id: str, status: str, body: str, *, for_client: bool = True) -> dict[str, Any]:
    """The item as our API shows it: always with an id and a status, and (`for_client`) completed into the
    shape OpenAI's clients read; without it, the stored JSON plus id and status (exports, which replay)."""
    value: dict[str, Any] = msgspec.json.decode(body)
    if "id" not in value or "status" not in value:
        value = {"id": item_id, **value}
        value.setdefault("status", status)
    return client_item(value) if for_client else value
