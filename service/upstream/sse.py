"""Reading OpenRouter's event stream (`stream: true` on POST /responses).

Events are told apart by the `type` inside each `data:` JSON, never by `event:` lines; `:` comment lines
(`: OPENROUTER PROCESSING`) are keep-alives; `data: [DONE]` ends the stream. OpenRouter's prose examples use
names its spec does not (`response.content_part.delta`, `response.done`, `response.error`, an `error` event with
a nested `error` object): `normalize_event` turns those into the spec's names so the rest of the service only
ever sees one vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from service.upstream.jsonutil import decode_upstream_json

logger = logging.getLogger("service.upstream.sse")

DONE_SENTINEL = b"[DONE]"
TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _decode_single(raw: bytes, *, warn: bool = True) -> dict[str, Any] | None:
    try:
        value = decode_upstream_json(raw)
    except ValueError:
        if warn:
            logger.warning("skipping an upstream stream event that is not JSON (%d bytes)", len(raw))
        return None
    return value if isinstance(value, dict) else None


def _decode_data(lines: list[bytes]) -> list[dict[str, Any]]:
    """One SSE event's data. Some servers send several `data:` lines without the blank line between events;
    when the joined text is not JSON, each line is tried on its own."""
    if len(lines) == 1:
        value = _decode_single(lines[0])
        return [] if value is None else [value]
    value = _decode_single(b"\n".join(lines), warn=False)
    if value is not None:
        return [value]
    return [v for v in (_decode_single(line) for line in lines) if v is not None]


async def iter_sse_json(chunks: AsyncIterable[bytes]) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of an SSE byte stream, in order, up to `data: [DONE]` or the end of the stream."""
    pending: list[bytes] = []  # the pieces of an unfinished line (a big event spans many chunks)
    data: list[bytes] = []
    async for chunk in chunks:
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        pending.append(chunk)
        lines = b"".join(pending).split(b"\n")
        pending = [lines.pop()]
        for raw_line in lines:
            line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
            if not line:
                if data:
                    for value in _decode_data(data):
                        yield value
                    data = []
                continue
            if line.startswith(b"data:"):
                payload = line[5:]
                if payload.startswith(b" "):
                    payload = payload[1:]
                if payload.strip() == DONE_SENTINEL:
                    return
                data.append(payload)
            # `event:`, `id:`, `retry:` and `:` comments carry nothing we use.
    tail = b"".join(pending).rstrip(b"\r")
    if tail.startswith(b"data:"):
        payload = tail[5:].lstrip(b" ")
        if payload.strip() == DONE_SENTINEL:
            payload = b""
        elif payload:
            data.append(payload)
    if data:
        for value in _decode_data(data):
            yield value


def _error_fields(source: dict[str, Any]) -> dict[str, Any]:
    code = source.get("code")
    message = source.get("message")
    return {
        "code": None if code is None else str(code),
        "message": message if isinstance(message, str) and message else "The upstream reported an error",
        "param": source.get("param") if isinstance(source.get("param"), str) else None,
    }


def _legacy_delta_text(event: dict[str, Any]) -> str:
    delta = event.get("delta")
    if isinstance(delta, str):
        return delta
    if isinstance(delta, dict) and isinstance(delta.get("text"), str):
        return str(delta["text"])
    part = event.get("part")
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return str(part["text"])
    return ""


# OpenRouter's documented names for a reasoning item's text events, and OpenAI's.
_REASONING_TEXT_EVENTS = {
    "response.reasoning.delta": "response.reasoning_text.delta",
    "response.reasoning.done": "response.reasoning_text.done",
}


def normalize_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """The event under the spec's name and shape, or None when it has no `type`.

    - `response.content_part.delta` (delta a string, `{text}` or a `part`) -> `response.output_text.delta`
    - `response.reasoning.delta` / `.done` -> `response.reasoning_text.delta` / `.done`
    - `response.done` -> `response.completed` (or `.incomplete`/`.failed` per the response's status)
    - `error` with `{error:{code,message}}`, and `response.error` -> `error` with top-level code/message/param
    """
    kind = event.get("type")
    if not isinstance(kind, str) or not kind or not kind.isprintable():
        return None  # (a type is relayed on an `event:` line: a newline in it would forge frames)
    if kind == "response.content_part.delta":
        return {**event, "type": "response.output_text.delta", "delta": _legacy_delta_text(event)}
    if kind in _REASONING_TEXT_EVENTS:
        return {"content_index": 0, **event, "type": _REASONING_TEXT_EVENTS[kind]}
    if kind == "response.done":
        response = event.get("response")
        if not isinstance(response, dict):
            # Seen in the wild: the response's fields at the top level of the event.
            response = {k: v for k, v in event.items() if k != "type"}
        status = response.get("status")
        terminal = f"response.{status}" if status in ("incomplete", "failed") else "response.completed"
        return {"type": terminal, "response": response}
    if kind in {"error", "response.error"}:
        nested = event.get("error")
        return {"type": "error", **_error_fields(nested if isinstance(nested, dict) else event)}
    return event
