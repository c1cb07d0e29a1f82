"""OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512."""

from __future__ import annotations

from typing import Any

from service.errors import InvalidRequest

MAX_PAIRS = 16
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 512


def validate_metadata(value: Any, *, param: str = "metadata") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object of string keys and string values", param=param)
    if len(value) > MAX_PAIRS:
        raise InvalidRequest(f"{param} has {len(value)} pairs; at most {MAX_PAIRS} are allowed", param=param)
    for key, item in value.items():
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidRequest(
                f"{param} key {key[:20]!r}... is longer than {MAX_KEY_LENGTH} characters",
                param=f"{param}.{key}",
            )
        if not isinstance(item, str):
            raise InvalidRequest(f"{param}.{key} must be a string", param=f"{param}.{key}")
        if len(item) > MAX_VALUE_LENGTH:
            raise InvalidRequest(f"{param}.{key} is longer than {MAX_VALUE_LENGTH} characters", param=f"{param}.{key}")
        # Stored as jsonb, which cannot hold U+0000.
        if "\x00" in key or "\x00" in item:
            raise InvalidRequest(f"{param} keys and values cannot contain U+0000", param=f"{param}.{key}")
    return value
