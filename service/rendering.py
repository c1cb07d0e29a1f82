"""Completing items into the shapes OpenAI's clients read. Upstreams leave out fields the specification requires
(an `output_text` part without `logprobs`, say); a client-facing copy gets them with their empty values. This is
a rendering step only: what is stored and replayed upstream stays exactly as received."""

from __future__ import annotations

from typing import Any

# A part's required fields that clients may leave out, with the value OpenAI documents for them then (an image's
# `detail` defaults to `auto`).
_PART_DEFAULTS: dict[str, dict[str, Any]] = {
    "output_text": {"annotations": [], "logprobs": []},
    "input_image": {"detail": "auto"},
}


def client_part(part: Any) -> Any:
    if not isinstance(part, dict) or not isinstance(kind := part.get("type"), str):
        return part
    defaults = _PART_DEFAULTS.get(kind)
    if defaults is not None and not defaults.keys() <= part.keys():
        return {**part, **{k: v for k, v in defaults.items() if k not in part}}
    return part


def client_item(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content")
    if item.get("type", "message") == "message" and isinstance(content, list):
        parts = [client_part(part) for part in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            return {**item, "content": parts}
    return item


def client_event(event: dict[str, Any]) -> dict[str, Any]:
    """A stream event whose `part` or `item` is completed (a copy when anything changes)."""
    if "part" in event:
        part = client_part(event["part"])
        if part is not event["part"]:
            return {**event, "part": part}
    elif isinstance(event.get("item"), dict):
        item = client_item(event["item"])
        if item is not event["item"]:
            return {**event, "item": item}
    return event
