"""The built-in demo upstream: an in-process stand-in for OpenRouter's POST /responses, used when no
OPENROUTER_API_KEY is set. Same wire format (JSON, or SSE when "stream": true), deterministic, no network.
What it answers (a message, a function call, a reasoning item, slowly) is chosen in demo_script.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from service.ids import new_id
from service.upstream import demo_script as script

# What GET /models lists offline: (context_length, max_completion_tokens). The small window lets `make run` show
# what the service does when a conversation outgrows its model (README, "Long conversations"); like
# OpenRouter, the demo refuses a request to it that does not fit.
DEMO_MODELS = {
    "demo/echo": (128000, 16384),  # the README's examples
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


def _message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": new_id("msg"),
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _output(request: dict[str, Any], items: list[Any]) -> list[dict[str, Any]]:
    """The answer's items: see service/upstream/demo_script.py for the words and settings that choose them."""
    output = [script.reasoning(items)] if script.asks(items, "think") else []
    name = script.function_to_call(request, items)
    if name is not None:
        return [*output, script.function_call(request, name)]
    structured = script.structured_text(request, items)
    if structured is not None:
        return [*output, _message(structured)]
    tool_said = script.tool_output_text(items)
    if tool_said is not None:
        return [*output, _message(f"[demo upstream] The tool answered: {tool_said!r}.")]
    turns = sum(1 for i in items if isinstance(i, dict) and i.get("role") == "user")
    text = (
        f"[demo upstream: no OPENROUTER_API_KEY set] You said: {script.last_user_text(items)!r}. "
        f"This conversation has {len(items)} item(s) and {turns} user message(s) so far."
    )
    return [*output, _message(text)]


def demo_reply(request: dict[str, Any]) -> dict[str, Any]:
    raw_input = request.get("input")
    items = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else list(raw_input or [])
    output = _output(request, items)
    digest = hashlib.sha256(msgspec.json.encode(items)).hexdigest()
    input_tokens = _input_tokens(items)
    output_tokens = len(msgspec.json.encode(output)) // 4
    reasoning_tokens = sum(len(msgspec.json.encode(i)) // 4 for i in output if i["type"] == "reasoning")
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
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "temperature": None,
        "top_p": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
            "cost": 0,
        },
    }


def _item_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    """One output item's events as OpenRouter streams them: added, its content as deltas, done."""
    ids = {"item_id": item["id"], "output_index": index}
    kind = item["type"]
    if kind == "message":
        shell = {**item, "status": "in_progress", "content": []}
    elif kind == "function_call":
        shell = {**item, "status": "in_progress", "arguments": ""}
    else:
        shell = {**item, "summary": []}
    events: list[dict[str, Any]] = [{"type": "response.output_item.added", "output_index": index, "item": shell}]
    if kind == "message":
        part = item["content"][0]
        words = part["text"].split(" ")
        deltas = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        text_ids = {**ids, "content_index": 0}
        events += [
            {"type": "response.content_part.added", **text_ids, "part": {**part, "text": ""}},
            *({"type": "response.output_text.delta", **text_ids, "delta": d, "logprobs": []} for d in deltas),
            {"type": "response.output_text.done", **text_ids, "text": part["text"], "logprobs": []},
            {"type": "response.content_part.done", **text_ids, "part": part},
        ]
    elif kind == "function_call":
        events += [
            {"type": "response.function_call_arguments.delta", **ids, "delta": item["arguments"]},
            {"type": "response.function_call_arguments.done", **ids, "arguments": item["arguments"]},
        ]
    else:
        for number, summary in enumerate(item["summary"]):
            summary_ids = {**ids, "summary_index": number}
            events += [
                {"type": "response.reasoning_summary_part.added", **summary_ids, "part": {**summary, "text": ""}},
                {"type": "response.reasoning_summary_text.delta", **summary_ids, "delta": summary["text"]},
                {"type": "response.reasoning_summary_text.done", **summary_ids, "text": summary["text"]},
                {"type": "response.reasoning_summary_part.done", **summary_ids, "part": summary},
            ]
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def demo_events(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's event sequence for the answer, each message's text delivered word by word."""
    in_progress = {**result, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
    ]
    for index, item in enumerate(result["output"]):
        events += _item_events(index, item)
    events.append({"type": "response.completed", "response": result})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


class _SSEBody(httpx.AsyncByteStream):
    def __init__(self, events: list[dict[str, Any]], delay: float) -> None:
        self._events = events
        self._delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b": OPENROUTER PROCESSING\n\n"
        for event in self._events:
            if self._delay:
                await asyncio.sleep(self._delay)
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
            raw_input = payload.get("input")
            slow = isinstance(raw_input, str | list) and script.asks(
                [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else raw_input, "slowly"
            )
            body = _SSEBody(demo_events(result), script.SLOW_EVENT_DELAY if slow else 0.0)
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)
        return httpx.Response(200, content=msgspec.json.encode(result), headers={"content-type": "application/json"})
