"""Connection-level bounds, in uvicorn's HTTP protocol: a connection must finish a request's headers within
HTTP_HEADER_TIMEOUT seconds of opening (or of its request's first byte), a request's body must not pause for
longer than that between two of its bytes and must keep up MIN_BODY_RATE on average, idle keep-alive connections
close after HTTP_KEEPALIVE_TIMEOUT, and past MAX_CONNECTIONS open connections a new one gets 503 and is closed.

uvicorn closes idle keep-alive connections but has no timeout for a connection that never finishes its
headers, nor for a body that trickles in: each such connection held a file descriptor (and a connection slot,
and the body so far) for as long as its client wished."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings
from service.errors import error_envelope


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.http_header_timeout, settings.max_connections)


def _closing_answer(status: str, error: dict[str, object], *, extra_headers: str = "") -> bytes:
    """A whole HTTP response written straight to the connection, which then closes: an error in OpenAI's
    envelope (uvicorn's own answers are plain text)."""
    body = msgspec.json.encode(error)
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra_headers}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _closing_answer(
    "503 Service Unavailable",
    error_envelope("Too many open connections; retry shortly", "server_error", None, "too_many_connections"),
    extra_headers="retry-after: 1\r\n",
)
_MALFORMED = _closing_answer(
    "400 Bad Request",
    error_envelope(
        "Invalid HTTP request: the request line or a header could not be parsed",
        "invalid_request_error",
        None,
        "invalid_http_request",
    ),
)
_HEADERS_TOO_LARGE = _closing_answer(
    "431 Request Header Fields Too Large",
    error_envelope(
        "The request line and headers are too large", "invalid_request_error", None, "request_headers_too_large"
    ),
)
# More than any real client sends (servers commonly allow 8-64 KiB): uvicorn's httptools parser has no bound, so
# a client could make it buffer headers for the whole header timeout.
MAX_HEADER_BYTES = 64 * 1024
# The largest request body the application takes (Litestar's request_max_body_size, a 413 past it).
MAX_BODY_BYTES = 32 * 1024 * 1024
# What a request may send besides its body's own bytes (its headers, a chunked body's framing and trailers), more
# than its body: past it the connection is closed, as what the parser buffers (a trailer's value, which it keeps
# whole) would be unbounded. Framing is not kept, so any amount of it in proportion to the body is taken.
_MAX_BESIDES_BODY_BYTES = 2 * MAX_HEADER_BYTES + 2 * 1024 * 1024
# The scope extension holding a callable that drops the request's connection at once (unsent data discarded).
DROP_CONNECTION = "convstore.drop_connection"
# Bytes a second a request's body must average, as Apache's mod_reqtimeout asks: it has HTTP_HEADER_TIMEOUT
# seconds, and one more for every MIN_BODY_RATE bytes that came. The pause limit alone let a client send a byte
# every few seconds and hold its connection, and a slot of MAX_CONNECTIONS, for as long as it wished: one tenant
# within its request rate could take every slot.
MIN_BODY_RATE = 500
_REFUSED_LINGER_SECONDS = 1.0


class _HeadersTooLarge(Exception):
    """Raised in a parser callback: httptools turns it into a parse error, which uvicorn answers."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a bound on open connections. Its limits come
    from the environment (so that uvicorn's worker processes, which import this class afresh, agree) unless a
    subclass from `guarded_protocol` carries them."""

    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).limits is None:
            type(self).limits = ConnectionLimits.from_settings(Settings.from_env())
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusing = False
        # A body not complete when the data that finished its headers was parsed: watched by one timer that
        # checks, when it fires, whether a byte came within the timeout (re-arming per chunk would cost a timer
        # per chunk of every large body).
        self._body_pending = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen_at = 0.0
        self._body_began_at = 0.0
        self._body_bytes = 0
        # Bytes of the request line and headers received so far (of the next request, between requests).
        self._header_bytes = 0
        self._header_tail = b""  # the last bytes of the chunk before, while in headers
        self._in_headers = True
        # The request line and header fields as parsed, and every byte of the request so far (the next one's
        # between requests).
        self._header_fields_bytes = 0
        self._headers_too_large = False
        self._request_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            # Answer, then half-close: the client reads the 503 and an end. Closing at once with its request
            # unread would reset the connection before the client read the answer.
            self._refusing = True
            transport.write(_BUSY)
            transport.write_eof()
            self.loop.call_later(_REFUSED_LINGER_SECONDS, transport.close)
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        self._request_bytes += len(data)
        if self._in_headers:
            # Counted before parsing, up to the end of the headers when this chunk holds it (what follows is
            # body): counted after, a chunk that held the whole of a too large request's headers went through.
            seen = self._header_tail + data  # the blank line may have begun in the chunk before
            end = seen.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(end + 4 - len(self._header_tail), 0)
            self._header_tail = seen[-3:]
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refusing = True
                self.transport.write(_HEADERS_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)
        if self._request_bytes - self._body_bytes > self._body_bytes + _MAX_BESIDES_BODY_BYTES:
            self._refusing = True
            self.transport.close()
            return
        if self._body_pending:
            self._body_seen_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self._limits.header_timeout, self._on_body_timer)

    def on_url(self, url: bytes) -> None:
        self._count_header_field(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_headers:
            # A trailer, after a chunked body: uvicorn added it to the request's headers, which the application
            # may already have read (an API key sent there authenticated a request no proxy saw carry one).
            return
        self._count_header_field(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_field(self, size: int) -> None:
        """The headers as parsed, whatever the chunks they came in (the raw count in data_received only bounds
        what the parser buffers): past MAX_HEADER_BYTES, a parse error that send_400_response answers with 431."""
        self._header_fields_bytes += size
        if self._header_fields_bytes > MAX_HEADER_BYTES:
            self._headers_too_large = True
            raise _HeadersTooLarge

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)  # the body's own bytes: headers sent with it buy no time
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm_body_timer()
        # The next request on this connection starts with its headers.
        self._in_headers = True
        self._header_bytes = 0
        self._header_tail = b""
        self._header_fields_bytes = 0
        self._request_bytes = 0
        self._body_bytes = 0
        super().on_message_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._in_headers = False
        self._body_pending = True  # until on_message_complete (at once for a request without a body)
        self._body_began_at = self.loop.time()
        self._body_bytes = 0
        super().on_headers_complete()
        # Lets a layer that gives up on its client (slow_readers.py) drop the connection: uvicorn then takes the
        # unfinished response for the client's disconnect, not for an application error.
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope.setdefault("extensions", {})[DROP_CONNECTION] = self.transport.abort

    def send_400_response(self, msg: str) -> None:
        """A request uvicorn's parser refused (a malformed request line, a header with control characters), or
        whose headers _count_header_field found too large."""
        self._refusing = True
        self.transport.write(_HEADERS_TOO_LARGE if self._headers_too_large else _MALFORMED)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    @property
    def _limits(self) -> ConnectionLimits:
        limits = type(self).limits
        assert limits is not None  # set in __init__
        return limits

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._limits.header_timeout, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _on_body_timer(self) -> None:
        """The body paused past the timeout, or fell behind MIN_BODY_RATE: the connection closes, which the
        application reads as its client leaving (nothing was done with a body it had not got)."""
        self._body_timer = None
        if not self._body_pending or self.transport.is_closing():
            return
        now = self.loop.time()
        timeout = self._limits.header_timeout
        if self.flow.read_paused:  # waiting for the application to take what came, not for the client
            self._body_seen_at = now
            self._body_began_at = now - self._body_bytes / MIN_BODY_RATE
        deadline = min(self._body_seen_at, self._body_began_at + self._body_bytes / MIN_BODY_RATE) + timeout
        if now >= deadline:
            self.transport.close()
        else:
            self._body_timer = self.loop.call_later(deadline - now, self._on_body_timer)


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol with these settings' limits (for a server in this process, as the tests start)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": ConnectionLimits.from_settings(settings)})


def uvicorn_options(settings: Settings, *, protocol: type[GuardedHttpProtocol] = GuardedHttpProtocol) -> dict[str, Any]:
    return {"http": protocol, "timeout_keep_alive": settings.http_keepalive_timeout}
