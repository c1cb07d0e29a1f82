"""A stream consumer that stops reading is disconnected after STREAM_WRITE_TIMEOUT seconds.

A run's frames stay in memory for as long as one follower still has some to read, and the server's send waits
while the client's socket is full: a client that never reads would hold both for as long as it keeps the
connection open. Its turn is not the request's to stop: the run goes on and is stored (STREAM_DISCONNECT_POLICY
decides, as for any disconnect).

Any other response that cannot be finished (errors.StreamBrokenOff, an export whose conversation was deleted
under it) is broken off the same way: the connection dropped, one line in the log, no traceback."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import StreamBrokenOff
from service.limits.connections import DROP_CONNECTION

logger = logging.getLogger("service.limits")


class _SlowReader(StreamBrokenOff):
    pass


def _is_event_stream(start: Message) -> bool:
    headers: Any = start.get("headers") or ()
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers)


class SlowReaderMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, *, write_timeout: float) -> None:
        self.write_timeout = write_timeout

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        streaming = False

        async def send_in_time(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                streaming = _is_event_stream(message)
            elif streaming:
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await send(message)
                except TimeoutError:
                    raise _SlowReader(
                        f"disconnected a stream client that read nothing for {self.write_timeout:g}s"
                    ) from None
                return
            await send(message)

        try:
            await next_app(scope, receive, send_in_time)
        except Exception as exc:
            broken = _broken_off(exc)
            if broken is None:
                raise
            extensions: dict[str, Any] = scope.get("extensions") or {}
            drop = extensions.get(DROP_CONNECTION)
            if drop is not None:
                drop()
                await asyncio.sleep(0)  # the server learns of the lost connection before this returns
            # Returning with the response unfinished makes the server close the connection (if still open).
            logger.info("%s", broken)


def _broken_off(exc: BaseException) -> StreamBrokenOff | None:
    """The StreamBrokenOff that `exc` is or wraps: Litestar wraps what a send or a body's iterator raises once
    the response started (`raise ... from`), and a streamed response's task group puts it in an ExceptionGroup
    first."""
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, StreamBrokenOff):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return None
