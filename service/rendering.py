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
# Required by OpenAI's schema, optional in OpenRouter's: its web search calls may come without the action (all a
# web search call can say then is that it searched) and its URL citations without a title.
_ITEM_DEFAULTS: dict[str, dict[str, Any]] = {
    "web_search_call": {"action": {"type": "search"}},
    "file_search_call": {"queries": []},
    # Required but nullable in OpenAI's schema, optional in the shapes clients send (FunctionShellCallItemParam).
    "shell_call": {"environment": None},
    "shell_call_output": {"max_output_length": None},
}
# The same for the action an item carries.
_ACTION_DEFAULTS: dict[str, dict[str, Any]] = {"shell_call": {"timeout_ms": None, "max_output_length": None}}
_ANNOTATION_DEFAULTS: dict[str, dict[str, Any]] = {"url_citation": {"title": ""}}


def _completed(value: Any, defaults_by_type: dict[str, dict[str, Any]]) -> Any:
    """`value` with the defaults of its type for the fields it lacks or holds as null, which OpenAI's input
    schemas take for "the default" while its items show the value (a copy when anything changes)."""
    if not isinstance(value, dict) or not isinstance(kind := value.get("type"), str):
        return value
    defaults = defaults_by_type.get(kind)
    if defaults is None:
        return value
    missing = {k: v for k, v in defaults.items() if k not in value or (value[k] is None and v is not None)}
    return {**value, **missing} if missing else value


def client_annotation(annotation: Any) -> Any:
    return _completed(annotation, _ANNOTATION_DEFAULTS)


def client_part(part: Any) -> Any:
    part = _completed(part, _PART_DEFAULTS)
    annotations = part.get("annotations") if isinstance(part, dict) else None
    if isinstance(annotations, list) and annotations:
        completed = [client_annotation(annotation) for annotation in annotations]
        if any(new is not old for new, old in zip(completed, annotations, strict=True)):
            return {**part, "annotations": completed}
    return part


# Items whose `output` may be a list of input parts (OpenAI's FunctionAndCustomToolCallOutput).
_PART_OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output"})


def client_item(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content")
    if item.get("type", "message") == "message" and isinstance(content, list):
        parts = [client_part(part) for part in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            return {**item, "content": parts}
        return item
    output = item.get("output")
    if item.get("type") in _PART_OUTPUT_TYPES and isinstance(output, list):
        parts = [client_part(part) for part in output]
        if any(new is not old for new, old in zip(parts, output, strict=True)):
            return {**item, "output": parts}
        return item
    completed: dict[str, Any] = _completed(item, _ITEM_DEFAULTS)
    return _with_action_completed(completed)


def _with_action_completed(item: dict[str, Any]) -> dict[str, Any]:
    defaults = _ACTION_DEFAULTS.get(str(item.get("type")))
    action = item.get("action")
    if defaults is None or not isinstance(action, dict) or defaults.keys() <= action.keys():
        return item
    return {**item, "action": {**action, **{k: v for k, v in defaults.items() if k not in action}}}


def client_event(event: dict[str, Any]) -> dict[str, Any]:
    """A stream event whose `part`, `item` or `annotation` is completed (a copy when anything changes)."""
    if "part" in event:
        part = client_part(event["part"])
        if part is not event["part"]:
            return {**event, "part": part}
    elif isinstance(event.get("item"), dict):
        item = client_item(event["item"])
        if item is not event["item"]:
            return {**event, "item": item}
    elif "annotation" in event:
        annotation = client_annotation(event["annotation"])
        if annotation is not event["annotation"]:
            return {**event, "annotation": annotation}
    return event
