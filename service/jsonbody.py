"""Strict JSON decoding for request bodies: a clear 400 for malformed JSON, lone surrogates or a non-object."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from service.errors import InvalidRequest

_decoder = msgspec.json.Decoder()


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _diagnose(raw: bytes, fast_error: Exception) -> InvalidRequest:
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
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets invalid UTF-8 through as the latter
        raise _diagnose(raw, exc) from None
    if not isinstance(value, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    return value


encode = msgspec.json.encode
