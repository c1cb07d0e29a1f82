"""A stream consumer that stops reading is disconnected after STREAM_WRITE_TIMEOUT seconds.

A run's frames stay in memory for as long as one follower still has some to read, and the server's send waits
while the client's socket is full: a client that never reads would hold both for as long as it keeps the
connection open. Its turn is not the request's to stop: the run goes on and is stored (STREAM_DISCONNECT_POLICY
decides, as for any disconnect)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.limits.connections import DROP_CONNECTION

logger = logging.getLogger("service.limits")


class _SlowReader(Exception):
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
                    raise _SlowReader from None
                return
            await send(message)

        try:
            await next_app(scope, receive, send_in_time)
        except Exception as exc:
            if not _raised_by_slow_reader(exc):
                raise
            extensions: dict[str, Any] = scope.get("extensions") or {}
            drop = extensions.get(DROP_CONNECTION)
            if drop is not None:
                drop()
                await asyncio.sleep(0)  # the server learns of the lost connection before this returns
            # Returning with the response unfinished makes the server close the connection (if still open).
            logger.info("disconnected a stream client that read nothing for %gs", self.write_timeout)


def _raised_by_slow_reader(exc: BaseException) -> bool:
    """Whether `exc` is, or wraps, our refusal to wait: Litestar wraps what a send raises once the response
    started (`raise ... from`), and a streamed response's task group puts it in an ExceptionGroup first."""
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, _SlowReader):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return False
