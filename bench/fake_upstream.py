"""A fast fake OpenRouter for benchmarks: `POST …/responses` answered in OpenRouter's JSON or SSE wire format, and
`GET …/models` with an empty catalog (no bench model is in OpenRouter's, so none has a context window).

It is a bare asyncio protocol on uvloop with httptools parsing (both already installed with uvicorn[standard]),
so its own cost per request stays far below the service's and it does not blur the figures. Behaviour is chosen
per request by the model name, which the service forwards untouched:

    bench/fast                      answer at once
    bench/latency-10                answer after 10 ms (non-streamed) or start the stream after 10 ms
    bench/paced-64x20               stream 64 text deltas 20 ms apart (non-streamed: answer after 64*20 ms)

`--latency-ms` sets the default latency for model names that do not say. Run it alone with
`python -m bench.fake_upstream --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
from typing import Any

import httptools
import msgspec

from tests.fake_openrouter import text_response, text_stream_events

_MODEL = re.compile(r"bench/(?:latency-(?P<latency>\d+(?:\.\d+)?)|paced-(?P<deltas>\d+)x(?P<interval>\d+(?:\.\d+)?))")
_ids = itertools.count(1)


class _RequestHead(msgspec.Struct):
    """The only fields the fake reads; msgspec skips the (large) input array without building it."""

    model: str = ""
    stream: bool = False


_decode_head = msgspec.json.Decoder(_RequestHead).decode
_EMPTY_CATALOG = b'{"data":[]}'
_encode = msgspec.json.encode


def behaviour(model: str, default_latency_ms: float) -> tuple[float, int, float]:
    """(latency seconds, deltas, interval seconds) for a model name."""
    match = _MODEL.search(model)
    if match is None:
        return default_latency_ms / 1000, 4, 0.0
    if match["latency"] is not None:
        return float(match["latency"]) / 1000, 4, 0.0
    return 0.0, int(match["deltas"]), float(match["interval"]) / 1000


def delta_text(index: int) -> str:
    """The text of delta `index`: the client checks it to detect lost or reordered events."""
    return f"<{index:05d}>"


def final_response(model: str, text: str, serial: int) -> dict[str, Any]:
    return text_response(text, model=model, msg_id=f"msg_bench_{serial}", response_id=f"gen-bench-{serial}")


def stream_events(model: str, deltas: int, serial: int) -> list[bytes]:
    """The tests' event sequence for one assistant message, each framed as an SSE `data:` line."""
    pieces = [delta_text(i) for i in range(deltas)]
    events = text_stream_events(
        "", pieces=pieces, model=model, msg_id=f"msg_bench_{serial}", response_id=f"gen-bench-{serial}"
    )
    return [b"data: " + _encode(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    def __init__(self, server: FakeUpstream) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._url = b""
        self._transport: asyncio.Transport | None = None
        self._busy: asyncio.Task[None] | None = None

    # -- asyncio ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._reply_now(400, b'{"error":{"code":400,"message":"bad request"}}')
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._busy is not None:
            self._busy.cancel()

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._body = []
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_method() == b"GET" and self._url.rstrip(b"/").endswith(b"/models"):
            # OpenRouter's catalog: the bench models are in none, so they have no context window, as there.
            self._reply_now(200, _EMPTY_CATALOG)
            return
        self._server.requests += 1
        try:
            head = _decode_head(b"".join(self._body))
        except msgspec.DecodeError:
            self._reply_now(400, b'{"error":{"code":400,"message":"body is not JSON"}}')
            return
        latency, deltas, interval = behaviour(head.model, self._server.default_latency_ms)
        serial = next(_ids)
        if head.stream:
            self._busy = asyncio.get_running_loop().create_task(self._stream(head.model, latency, deltas, interval))
            return
        delay = latency + deltas * interval if interval else latency
        payload = _encode(final_response(head.model, "Hello from the bench upstream.", serial))
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._reply_now, 200, payload)
        else:
            self._reply_now(200, payload)

    # -- answers ---------------------------------------------------------------------------------------
    def _reply_now(self, status: int, payload: bytes) -> None:
        if self._transport is None:
            return
        reason = b"OK" if status == 200 else b"Bad Request"
        self._transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, len(payload), payload)
        )

    async def _stream(self, model: str, latency: float, deltas: int, interval: float) -> None:
        if latency:
            await asyncio.sleep(latency)
        events = stream_events(model, deltas, next(_ids))
        transport = self._transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        # Events before the first delta go at once, each delta after `interval`, the tail at once.
        first_delta, after_last = 4, 4 + deltas
        transport.write(_chunk(b"".join(events[:first_delta])))
        for event in events[first_delta:after_last]:
            if interval:
                await asyncio.sleep(interval)
            if self._transport is None:
                return
            transport.write(_chunk(event))
        transport.write(_chunk(b"".join(events[after_last:])) + b"0\r\n\r\n")
        self._busy = None

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class FakeUpstream:
    def __init__(self, *, default_latency_ms: float = 0.0) -> None:
        self.default_latency_ms = default_latency_ms
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


async def _serve(port: int, latency_ms: float) -> None:
    server = FakeUpstream(default_latency_ms=latency_ms)
    bound = await server.start(port=port)
    print(f"fake upstream on http://127.0.0.1:{bound}/api/v1", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    import uvloop  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="default latency for unnamed models")
    args = parser.parse_args()
    uvloop.run(_serve(args.port, args.latency_ms))


if __name__ == "__main__":
    main()
