"""Our OpenRouter key never reaches a client, a stored item or the event log, whatever the upstream echoes:
in an error's message or code, JSON-escaped in a body (`\\u0073\\u006b…`, gone once decoded), or split across
stream deltas.

Deltas are relayed as they come, so a key split across two of them would be half sent before it could be
recognized: the tail of each delta that could begin the key is held back and prepended to the next delta of
the same text (or sent alone before the next other event, or before the stream ends). Only tails
that match the key's start are held, so ordinary text flows through with the same boundaries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

REDACTED = "[redacted]"
# A key shorter than this is no real OpenRouter key (theirs run past 70 characters; a test's or a demo's may be
# one letter), and replacing it everywhere would corrupt ordinary text and JSON: a key "x" would take every x.
MIN_REDACTED_LENGTH = 16
_DELTA = ".delta"
_IDS = ("item_id", "output_index", "content_index", "summary_index")


def redactable(secret: str | None) -> str | None:
    """The key to redact from what the upstream sends: None when there is none, or it is too short to be one."""
    return secret if secret and len(secret) >= MIN_REDACTED_LENGTH else None


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text


def redact_all(value: Any, secret: str) -> Any:
    """`redact` through a decoded JSON value, keys included."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {redact_all(key, secret): redact_all(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_all(item, secret) for item in value]
    return value


def _start_of_key_at_end(text: str, secret: str) -> int:
    """The length of the longest tail of `text` that is a proper prefix of `secret` (0 when none)."""
    first = secret[0]
    start = max(0, len(text) - len(secret) + 1)
    index = text.find(first, start)
    while index != -1:
        if secret.startswith(text[index:]):
            return len(text) - index
        index = text.find(first, index + 1)
    return 0


class StreamRedactor:
    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._held: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}

    def feed(self, event: dict[str, Any]) -> Iterator[dict[str, Any]]:
        kind = event.get("type")
        delta = event.get("delta")
        if isinstance(kind, str) and kind.endswith(_DELTA) and isinstance(delta, str):
            yield self._delta(kind, event, delta)
            return
        if self._held:  # any other event ends the deltas before it
            yield from self.flush()
        yield redact_all(event, self._secret)

    def flush(self) -> Iterator[dict[str, Any]]:
        """What is held, as delta events: before any other event, and when the stream ends or breaks."""
        held, self._held = self._held, {}
        for event, text in held.values():
            yield {**event, "delta": text}

    def _delta(self, kind: str, event: dict[str, Any], delta: str) -> dict[str, Any]:
        slot = (kind, *(event.get(name) for name in _IDS))
        held = self._held.pop(slot, None)
        text = redact(held[1] + delta if held else delta, self._secret)
        keep = _start_of_key_at_end(text, self._secret)
        if keep:
            self._held[slot] = (event, text[-keep:])
            text = text[:-keep]
        if text is delta:
            return event
        return {**event, "delta": text}
