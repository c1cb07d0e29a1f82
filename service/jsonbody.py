"""Strict JSON decoding for request bodies: a clear 400 for malformed JSON, lone surrogates, nesting deeper than
MAX_JSON_DEPTH or a non-object."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from service.errors import InvalidRequest

# Deeper values than any real request needs; every later reader (the idempotency fingerprint, a stored item's
# replay, the stdlib's parser) then stays far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# More arrays and objects than any real request holds (2,000 input items of a few each, tools' schemas): each
# costs a Python object to decode, and a body of millions of empty arrays held the event loop and a great deal of
# memory, and so did every later read of the stored parameters.
MAX_JSON_CONTAINERS = 100_000
# And more keys and elements: a flat object of millions of keys (a few bytes each) fits any body limit, and its
# decoding, then every read of it once stored, held the event loop for seconds.
MAX_JSON_VALUES = 500_000

_decoder = msgspec.json.Decoder()


def _too_deep(param: str | None) -> InvalidRequest:
    where = f" (in {param})" if param else ""
    return InvalidRequest(
        f"Request body is nested too deeply{where}: at most {MAX_JSON_DEPTH} levels of arrays and objects",
        param=param,
        code="json_too_deep",
    )


def check_depth(value: dict[str, Any]) -> None:
    """Raise 400 naming the top-level field that nests deeper than MAX_JSON_DEPTH; iterative, so any depth
    msgspec decoded is safe to walk."""
    for key, child in value.items():
        stack: list[tuple[Any, int]] = [(child, 2)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, dict):
                children: Any = node.values()
            elif isinstance(node, list):
                children = node
            else:
                continue
            if depth > MAX_JSON_DEPTH:
                raise _too_deep(key)
            stack.extend((item, depth + 1) for item in children if isinstance(item, dict | list))


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def _containers(raw: bytes) -> int:
    """How many arrays and objects a JSON text holds: its brackets outside strings, counted in C loops."""
    return len(_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)) // 2


_NOT_COMMAS_OR_QUOTES = bytes(byte for byte in range(256) if byte not in b'",')


def too_many_values(raw: bytes) -> bool:
    """Whether a JSON text's arrays and objects hold more than about MAX_JSON_VALUES keys and elements together:
    its commas outside strings (one fewer than the members of each array and object). Counted outside strings
    only when there are more than that at all (a long text holds many), and refused without that count when its
    strings alone are more than twice as many (a member holds at most two: its key and its value)."""
    if raw.count(b",") <= MAX_JSON_VALUES:
        return False
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    if unescaped.count(b'"') > 4 * MAX_JSON_VALUES:
        return True
    outside = unescaped.translate(None, _NOT_COMMAS_OR_QUOTES).split(b'"')[::2]
    return sum(part.count(b",") for part in outside) > MAX_JSON_VALUES


def nests_too_deep(raw: bytes) -> bool:
    """Whether a JSON text (valid, e.g. stored) nests deeper than MAX_JSON_DEPTH: a scan of its strings and
    brackets, without decoding it (Python's and msgspec's recursion would be the limit then)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token in b"]}":
            depth -= 1
    return False


def _deep_field(raw: bytes) -> str | None:
    """The top-level field of a body too deep for msgspec to decode: a scan of its strings and brackets."""
    depth = 0
    field_name: bytes | None = None
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token[0] == 0x22:  # a string: at depth 1, the last one before a bracket is that value's key
            if depth == 1:
                field_name = token
        elif token in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                break
        else:
            depth -= 1
    if field_name is None:
        return None
    try:
        name = json.loads(field_name)
    except ValueError:
        return None
    return name if isinstance(name, str) else None


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def diagnose(raw: bytes, fast_error: Exception) -> InvalidRequest:
    """Why a body msgspec refused is not valid JSON, in words a client can act on."""
    # msgspec rejects lone surrogates with a confusing "truncated" message; the stdlib parser tells us why.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidRequest(f"Request body is not valid UTF-8 (byte {exc.start})", code="invalid_json")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return InvalidRequest(
            f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            code="invalid_json",
        )
    except RecursionError:
        return _too_deep(_deep_field(raw))
    except ValueError:  # valid JSON neither parser holds: an integer of thousands of digits
        return InvalidRequest(f"Request body is not valid JSON: {fast_error}", code="invalid_json")
    if _has_lone_surrogate(value):
        return InvalidRequest(
            "Request body contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); "
            "strings must be valid Unicode",
            code="invalid_json",
        )
    return InvalidRequest(f"Request body is not valid JSON: {fast_error}", code="invalid_json")


def decode_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequest("Request body is empty; expected a JSON object", code="invalid_json")
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_CONTAINERS and _containers(raw) > MAX_JSON_CONTAINERS:
        raise InvalidRequest(
            f"Request body holds more than {MAX_JSON_CONTAINERS} arrays and objects", code="json_too_complex"
        )
    if too_many_values(raw):
        raise InvalidRequest(
            f"Request body holds more than {MAX_JSON_VALUES} keys and array elements", code="json_too_complex"
        )
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets invalid UTF-8 through as the latter
        raise diagnose(raw, exc) from None
    except RecursionError:
        raise _too_deep(_deep_field(raw)) from None
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    # Counting brackets is a C loop over the bytes; only a body with enough of them to be that deep is walked.
    if brackets > MAX_JSON_DEPTH:
        check_depth(value)
    return value


encode = msgspec.json.encode
