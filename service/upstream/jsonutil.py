"""Decoding what the upstream sends. Upstream text may carry lone surrogates, which PostgreSQL and UTF-8 cannot
hold: they become U+FFFD rather than failing the turn."""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(value) else value
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
    except msgspec.DecodeError:
        pass
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return _replace_surrogates(value)
