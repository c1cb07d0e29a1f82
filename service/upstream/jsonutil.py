"""Decoding what the upstream sends. Upstream text may carry lone surrogates, which PostgreSQL and UTF-8 cannot
hold: they become U+FFFD rather than failing the turn."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

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
    """Raises ValueError when the text is not JSON at all."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return _replace_surrogates(value)
