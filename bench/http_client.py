"""A minimal HTTP/1.1 keep-alive client for the load generator: one connection per simulated client, httptools
parsing, timestamps at the first body byte and at the end. It costs a few tens of microseconds per request, so
on a 2-core machine the generator steals as little CPU as possible from the service it measures (httpx's native
client costs about 1 ms per request at high concurrency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools


@dataclass
class Reply:
    status: int = 0
    body: bytes = b""
    started_ns: int = 0
    first_byte_ns: int = 0  # first byte of the response body (for SSE: the first event)
    finished_ns: int = 0
    chunks: list[bytes] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.finished_ns - self.started_ns) / 1e9

    @property
    def first_byte_seconds(self) -> float:
        return (self.first_byte_ns - self.started_ns) / 1e9


class ConnectionLost(Exception):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: Reply | None = None
        self.done: asyncio.Future[Reply] | None = None
        self.on_chunk: Callable[[bytes], None] | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionLost(str(exc) if exc else "connection closed"))

    def on_headers_complete(self) -> None:
        assert self.reply is not None
        self.reply.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        reply = self.reply
        assert reply is not None
        if not reply.first_byte_ns:
            reply.first_byte_ns = time.perf_counter_ns()
        if self.on_chunk is not None:
            self.on_chunk(body)
        else:
            reply.chunks.append(body)

    def on_message_complete(self) -> None:
        reply = self.reply
        assert reply is not None and self.done is not None
        reply.finished_ns = time.perf_counter_ns()
        if not reply.first_byte_ns:
            reply.first_byte_ns = reply.finished_ns
        reply.body = b"".join(reply.chunks)
        reply.chunks = []
        if not self.done.done():
            self.done.set_result(reply)


class Client:
    """One keep-alive connection to host:port; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._fixed_headers = f"host: {host}:{port}\r\n{extra}".encode()
        self._protocol: _Protocol | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        return protocol

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not protocol.keep_alive:
            protocol = self._protocol = await self._connect()
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode(), path.encode(), self._fixed_headers)
        if body:
            head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        protocol.parser = httptools.HttpResponseParser(protocol)
        protocol.on_chunk = on_chunk
        protocol.reply = Reply(started_ns=time.perf_counter_ns())
        protocol.done = asyncio.get_running_loop().create_future()
        assert protocol.transport is not None
        protocol.transport.write(head + b"\r\n" + body)
        try:
            return await asyncio.wait_for(protocol.done, timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
