"""Decoding what the upstream sends. Upstream text may carry lone surrogates, which PostgreSQL and UTF-8 cannot
hold: they become U+FFFD rather than failing the turn."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from service.jsonbody import MAX_JSON_DEPTH, nests_too_deep

_decoder = msgspec.json.Decoder()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        # encode(..., "replace") would give "?"; U+FFFD is Unicode's own mark for an unrepresentable character.
        return _SURROGATE.sub("\ufffd", value) if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode_upstream_json(raw: bytes | str) -> Any:
    """Raises ValueError when the text is not JSON at all, or nests deeper than any request body may: every later
    reader of the value (redaction, storage, the next turn's replay) walks it recursively."""
    if nests_too_deep(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return _replace_surrogates(value)
