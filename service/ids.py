"""The one id generator. Ids sort by creation time (48-bit millisecond prefix) so that new rows land at the
end of primary-key indexes, and carry 120 random bits so they cannot be guessed."""

from __future__ import annotations

import secrets
import time


def can_exist(value: str) -> bool:
    """False for an id that no row can have: PostgreSQL text cannot hold U+0000 (asking would be an error)."""
    return "\x00" not in value


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{millis:012x}{secrets.token_hex(15)}"
