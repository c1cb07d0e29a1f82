"""Items imported into a new conversation get new ids and keep everything else (a fork does the same in SQL:
lifecycle/repository.py).

An item's id lives in one of two places: in its stored JSON (upstream output, assistant messages, function
calls), or only in the id column (what clients sent as input; the items API adds it when it shows them). A copy
gets a new id in the same place, so the copy is shown, and replayed upstream, exactly as the original but for
its id."""

from __future__ import annotations

from typing import Any

import msgspec

from service.context.tokens import item_tokens
from service.ids import new_id
from service.items import ID_PREFIX_BY_TYPE, NewItem, as_output_parts, extract_text, text_parts

_decoder = msgspec.json.Decoder()
_encode = msgspec.json.encode
_INPUT_ROLES = frozenset({"user", "system", "developer"})


def fresh_id(kind: str, old_id: Any) -> str:
    """A new id with the old one's prefix (msg_, fc_, rs_, ...) when it had one, else the type's."""
    if isinstance(old_id, str):
        prefix, sep, _ = old_id.partition("_")
        if sep and prefix.isalnum() and len(prefix) <= 8:
            return new_id(prefix)
    return new_id(ID_PREFIX_BY_TYPE.get(kind, "item"))


def _column(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_client_input(value: dict[str, Any]) -> bool:
    """Client input (user, system and developer messages, tool outputs) is stored without an id; assistant
    messages and upstream items keep theirs in their JSON (OpenRouter needs them)."""
    kind = value.get("type")
    if kind == "message":
        return value.get("role") in _INPUT_ROLES
    return isinstance(kind, str) and kind.endswith("_output")


def _as_stored(value: dict[str, Any]) -> dict[str, Any]:
    """A message as the items API stores one, for a line no export wrote (an export's are so already): string
    content as its content part, an assistant message's input_text parts as output_text, and a status on it,
    which OpenRouter requires of every assistant message in the history (the id is given below)."""
    if value.get("type") != "message":
        return value
    role = str(value.get("role"))
    if isinstance(value.get("content"), str):
        value = {**value, "content": text_parts(role, value["content"])}
    elif role == "assistant":
        value = {**value, "content": as_output_parts(value["content"])}
    if role == "assistant" and not isinstance(value.get("status"), str):
        value = {**value, "status": "completed"}
    return value


def imported_item(value: dict[str, Any]) -> NewItem:
    """An exported item line as a new item whose own export is that line but for the id. The items API shows
    an id kept only in the column first, and a status kept only in the column last: such an id and status
    are not stored in the JSON, so the copy replays upstream as the original did."""
    value = _as_stored(value)
    kind = str(value["type"])
    status = _column(value.get("status")) or "completed"
    renewed = fresh_id(kind, value.get("id"))
    if _is_client_input(value) and next(iter(value), "id") == "id":
        stored = {k: v for k, v in value.items() if k != "id"}
        if next(reversed(stored), None) == "status":
            del stored["status"]
    elif "id" in value:
        stored = {**value, "id": renewed}
    elif _is_client_input(value):
        stored = value  # as the items API stores client input: its id only in the column, not sent upstream
    else:
        stored = {"id": renewed, **value}
    role = _column(value.get("role"))
    return NewItem(renewed, kind, role, status, _encode(stored).decode(), extract_text(value), item_tokens(stored))
