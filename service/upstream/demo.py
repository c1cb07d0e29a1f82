"""The built-in demo upstream: an in-process stand-in for OpenRouter's POST /responses, used when no
OPENROUTER_API_KEY is set. Same wire format (JSON, or SSE when "stream": true), deterministic, no network."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from service.ids import new_id


def _last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "input_text"]
                return " ".join(t for t in texts if isinstance(t, str))
    return ""


# What GET /models lists offline: (context_length, max_completion_tokens). The small window lets `make run` show
# what the service does when a conversation outgrows its model (README, "Long conversations"); like
# OpenRouter, the demo refuses a request to it that does not fit.
DEMO_MODELS = {
    "openai/gpt-4o-mini": (128000, 16384),
    "demo/small-window": (2000, 300),
}


def demo_models() -> dict[str, Any]:
    return {
        "data": [
            {
                "id": model,
                "name": model,
                "created": 1700000000,
                "context_length": context,
                "architecture": {"modality": "text->text", "tokenizer": "Other"},
                "pricing": {"prompt": "0", "completion": "0"},
                "top_provider": {"context_length": context, "max_completion_tokens": completion},
            }
            for model, (context, completion) in DEMO_MODELS.items()
        ]
    }


def _input_tokens(items: list[Any]) -> int:
    return sum(len(msgspec.json.encode(i)) // 4 + 1 for i in items)


def demo_overflow(request: dict[str, Any]) -> dict[str, Any] | None:
    """OpenRouter's 400 for a request longer than the model's window, or None when it fits."""
    window = DEMO_MODELS.get(str(request.get("model")))
    raw_input = request.get("input")
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else list(raw_input or [])
    if window is None:
        return None
    output = request.get("max_output_tokens") or window[1]
    requested = _input_tokens(items) + output
    if requested <= window[0]:
        return None
    return {
        "error": {
            "code": 400,
            "message": f"This endpoint's maximum context length is {window[0]} tokens. However, you requested "
            f"about {requested} tokens ({requested - output} of text input, {output} in the output).",
        },
        "error_type": "context_length_exceeded",
    }


def demo_reply(request: dict[str, Any]) -> dict[str, Any]:
    raw_input = request.get("input")
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else list(raw_input or [])
    said = _last_user_text(items)
    turns = sum(1 for i in items if isinstance(i, dict) and i.get("role") == "user")
    text = (
        f"[demo upstream: no OPENROUTER_API_KEY set] You said: {said!r}. "
        f"This conversation has {len(items)} item(s) and {turns} user message(s) so far."
    )
    digest = hashlib.sha256(msgspec.json.encode(items)).hexdigest()
    input_tokens = _input_tokens(items)
    output_tokens = len(text.split())
    now = int(time.time())
    return {
        "id": f"gen-demo-{digest[:24]}",
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "model": str(request.get("model") or "demo/echo"),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "metadata": None,
        "output": [
            {
                "type": "message",
                "id": new_id("msg"),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": None,
        "top_p": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
            "cost": 0,
        },
    }


def demo_events(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's event sequence for a one-message answer, text delivered word by word."""
    message = result["output"][0]
    text = message["content"][0]["text"]
    in_progress = {**result, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    empty_message = {**message, "status": "in_progress", "content": []}
    words = text.split(" ")
    deltas = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    ids = {"item_id": message["id"], "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
        {"type": "response.output_item.added", "output_index": 0, "item": empty_message},
        {
            "type": "response.content_part.added",
            **ids,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        *(
            {"type": "response.output_text.delta", **ids, "content_index": 0, "delta": d, "logprobs": []}
            for d in deltas
        ),
        {"type": "response.output_text.done", **ids, "content_index": 0, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **ids, "content_index": 0, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": result},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


class _SSEBody(httpx.AsyncByteStream):
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b": OPENROUTER PROCESSING\n\n"
        for event in self._events:
            yield b"data: " + msgspec.json.encode(event) + b"\n\n"
        yield b"data: [DONE]\n\n"


class DemoTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx.Response(200, content=msgspec.json.encode(demo_models()))
        if request.method != "POST" or not request.url.path.endswith("/responses"):
            return httpx.Response(404, json={"error": {"code": 404, "message": "Not found"}})
        try:
            payload = msgspec.json.decode(await request.aread())
        except msgspec.DecodeError:
            return httpx.Response(400, json={"error": {"code": 400, "message": "Body is not JSON"}})
        if not isinstance(payload, dict) or not payload.get("model") or payload.get("input") is None:
            return httpx.Response(400, json={"error": {"code": 400, "message": "model and input are required"}})
        overflow = demo_overflow(payload)
        if overflow is not None:
            return httpx.Response(400, content=msgspec.json.encode(overflow))
        result = demo_reply(payload)
        if payload.get("stream"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_SSEBody(demo_events(result))
            )
        return httpx.Response(200, content=msgspec.json.encode(result), headers={"content-type": "application/json"})
