"""The OpenRouter client: POST /responses with retries before any byte reached our client, per-phase timeouts
and a total deadline. It knows nothing of the database."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from service.config import Settings
from service.observability import upstream as observe
from service.observability.tracing import wrap_transport
from service.upstream.body import UpstreamBody
from service.upstream.errors import UpstreamError, from_error_body, parse_retry_after
from service.upstream.jsonutil import decode_upstream_json
from service.upstream.redaction import REDACTED, StreamRedactor, redact_all, redactable
from service.upstream.sse import iter_sse_json, normalize_event

logger = logging.getLogger("service.upstream")

_BACKOFF_CAP_SECONDS = 8.0
# The statuses of a Response that has ended (OpenAI's ResponseStatus less queued and in_progress).
_FINISHED = frozenset({"completed", "incomplete", "failed", "cancelled"})
_NOT_DECODABLE = "OpenRouter sent a body its Content-Encoding does not decode"
# A stream carries an answer's text several times over (its deltas, each part's and item's done event, the final
# Response): its bytes are bounded at this many times the largest answer.
_STREAM_BYTES_PER_ANSWER_BYTE = 8


def _too_large(limit: int) -> str:
    return f"OpenRouter's answer is larger than {limit} bytes (MAX_CONVERSATION_BYTES): no conversation could hold it"


class OpenRouterClient:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        # An answer is stored whole and replayed on every later turn: one larger than a conversation may hold would
        # leave its conversation refusing every turn after it (and is read into memory first).
        # MAX_CONVERSATION_BYTES=0 turns the cap off, and with it this bound (0 bytes would refuse every answer).
        self._max_answer: int | None = settings.max_conversation_bytes or None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.openrouter_api_key:
            headers["Authorization"] = f"Bearer {settings.openrouter_api_key}"
        if settings.openrouter_app_url:
            headers["HTTP-Referer"] = settings.openrouter_app_url
        if settings.openrouter_app_title:
            headers["X-OpenRouter-Title"] = settings.openrouter_app_title
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_first_byte_timeout,
            write=settings.upstream_connect_timeout,
            pool=settings.upstream_connect_timeout,
        )
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=min(200, settings.upstream_max_connections),
        )
        # httpx's API with aiohttp underneath: with many requests in flight httpx's own pool costs several times
        # this transport's CPU per request (docs/benchmarks.md). Requests go to the transport directly:
        # AsyncClient's URL merging, cookie jar, auth and redirect handling cost CPU on every request and we want
        # none of them (OpenRouter is one fixed URL; a redirect would not be followed anyway).
        self._transport = wrap_transport(transport or AiohttpTransport(limits=limits))
        self._url = httpx.URL(settings.openrouter_base_url + "/responses")
        self._headers = httpx.Headers(headers)
        self._extensions = {"timeout": timeout.as_dict()}
        self._sent = httpx.Request("POST", self._url)
        # The key as it is taken out of what OpenRouter sends back (None: nothing to take out).
        self._secret = redactable(settings.openrouter_api_key)

    @property
    def settings(self) -> Settings:
        return self._settings

    async def aclose(self) -> None:
        await self._transport.aclose()

    def _backoff(self, attempt: int, error: UpstreamError) -> float:
        if error.retry_after is not None:
            wait: float = min(error.retry_after, self._settings.upstream_retry_max_wait)
            return wait
        delay: float = min(_BACKOFF_CAP_SECONDS, self._settings.upstream_retry_base_delay * 2.0 ** (attempt - 1))
        return delay * random.uniform(0.75, 1.0)  # noqa: S311 - jitter, not security

    def _request(self, body: UpstreamBody) -> httpx.Request:
        if isinstance(body, bytes):
            return httpx.Request("POST", self._url, headers=self._headers, content=body, extensions=self._extensions)
        headers = self._headers.copy()
        headers["Content-Length"] = str(body.length)  # sent as it is, not chunked
        return httpx.Request("POST", self._url, headers=headers, content=body.chunks(), extensions=self._extensions)

    async def _send(self, body: UpstreamBody, *, stream: bool) -> httpx.Response:
        """One attempt: returns a response with a success status (body unread when streaming)."""
        try:
            request = self._request(body)
            response = await self._transport.handle_async_request(request)
            observe.answered(response.status_code)
            # The response would keep the request, body included (the whole history), for as long as a
            # stream lasts; a body-less stand-in keeps what error reporting reads (method and URL).
            response.request = self._sent
        except httpx.ConnectTimeout:
            # The aiohttp transport also reports refused or dropped connections as ConnectTimeout: either way
            # nothing was generated, so it is a connection failure (retried), not a slow answer.
            raise UpstreamError("Could not reach OpenRouter (connection failed)", kind="connect") from None
        except httpx.TimeoutException:
            raise UpstreamError("OpenRouter did not answer in time", kind="timeout") from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"Could not reach OpenRouter ({type(exc).__name__})", kind="connect") from None
        if response.status_code < 400:
            if not stream:
                try:
                    await self._read(response)
                except BaseException:
                    # A body that broke off (or was too large) leaves the connection checked out: give it back
                    # now, not when the garbage collector finds it.
                    await response.aclose()
                    raise
            return response
        try:
            raw = await self._read(response)
        finally:
            await response.aclose()
        try:
            payload = decode_upstream_json(raw)
        except ValueError:
            payload = None
        raise from_error_body(
            response.status_code,
            payload,
            parse_retry_after(response.headers.get("retry-after")),
            secret=self._secret,
        )

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if self._max_answer is not None and declared.isdigit() and int(declared) > self._max_answer:
            raise UpstreamError(_too_large(self._max_answer), kind="protocol")
        try:
            body = await response.aread()
        except httpx.ConnectTimeout:
            raise UpstreamError("OpenRouter connection broke before the answer was complete", kind="connect") from None
        except httpx.TimeoutException:
            raise UpstreamError("OpenRouter stopped sending before the answer was complete", kind="timeout") from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"OpenRouter connection broke ({type(exc).__name__})", kind="connect") from None
        except httpx.DecodingError:
            raise UpstreamError(_NOT_DECODABLE, kind="protocol") from None
        if self._max_answer is not None and len(body) > self._max_answer:
            raise UpstreamError(_too_large(self._max_answer), kind="protocol")
        return body

    async def _send_with_retries(self, body: UpstreamBody, *, stream: bool) -> httpx.Response:
        attempts = self._settings.upstream_max_attempts
        for attempt in range(1, attempts + 1):
            observe.attempt_started()
            try:
                return await self._send(body, stream=stream)
            except UpstreamError as error:
                if not error.retryable or attempt == attempts:
                    observe.failed(error.kind, error.upstream_status)
                    raise
                observe.retried()
                delay = self._backoff(attempt, error)
                logger.warning(
                    "upstream attempt %d/%d failed (%s: %s); retrying in %.2fs",
                    attempt,
                    attempts,
                    error.kind,
                    error.message,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get_json(self, path: str) -> Any:
        """GET `<base>/<path>` once (no retries: callers keep what they had and ask again later)."""
        url = httpx.URL(self._settings.openrouter_base_url + "/" + path.lstrip("/"))
        try:
            # Bounded like a connection: whatever waits for this (the first turn of a process) waits no longer.
            async with asyncio.timeout(self._settings.upstream_connect_timeout * 2):
                request = httpx.Request("GET", url, headers=self._headers, extensions=self._extensions)
                response = await self._transport.handle_async_request(request)
                try:
                    raw = await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TransportError) as exc:
            raise UpstreamError(f"Could not read OpenRouter's {path} ({type(exc).__name__})", kind="connect") from None
        if response.status_code >= 400:
            raise UpstreamError(
                f"OpenRouter answered HTTP {response.status_code} to GET {path}",
                kind="http",
                upstream_status=response.status_code,
            )
        try:
            return decode_upstream_json(raw)
        except ValueError:
            raise UpstreamError(f"OpenRouter's {path} is not JSON", kind="protocol") from None

    async def create(self, body: UpstreamBody) -> dict[str, Any]:
        """Non-streamed turn. Retries happen here; the total deadline covers every attempt."""
        observe.call_started()
        try:
            async with asyncio.timeout(self._settings.upstream_total_timeout):
                response = await self._send_with_retries(body, stream=False)
        except TimeoutError:
            observe.failed("timeout", None)
            raise UpstreamError("OpenRouter did not finish within the total timeout", kind="timeout") from None
        finally:
            observe.call_ended()
        try:
            payload = self._answer(response)
        except UpstreamError as error:
            # After the retries, so counted and logged here, like the errors _send_with_retries gives up on.
            observe.failed(error.kind, error.upstream_status)
            raise
        generation = generation_id(response)
        if generation is not None:
            payload["id"] = generation  # what OpenRouter's GET /generation?id= looks up (usage and cost later)
        return payload

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """A non-streamed answer's body, with our key taken out; UpstreamError when it is no answer."""
        content = response.content
        secret = self._secret
        if secret:
            content = content.replace(secret.encode(), REDACTED.encode())
        try:
            payload = decode_upstream_json(content)
        except ValueError:
            raise UpstreamError("OpenRouter sent an answer that is not JSON", kind="protocol") from None
        if secret and b"\\u" in content:  # the key could hide behind JSON escapes, which decoding undid
            payload = redact_all(payload, secret)
        if not isinstance(payload, dict):
            raise UpstreamError("OpenRouter sent an answer that is not a JSON object", kind="protocol")
        status = payload.get("status")
        finished = isinstance(status, str) and status in _FINISHED
        if payload.get("error") is not None and not finished:
            raise from_error_body(response.status_code, payload, None, secret=self._secret)
        # Stored as it is, an answer that has not finished (or has no output) would be a completed turn that
        # answered nothing, and its user message would join the conversation alone.
        if not isinstance(payload.get("output"), list) or not (status is None or finished):
            shown = status if isinstance(status, str) else type(status).__name__
            raise UpstreamError(
                f"OpenRouter sent an answer that has not finished (status {shown[:40]})", kind="protocol"
            )
        return payload

    @asynccontextmanager
    async def open_stream(self, body: UpstreamBody) -> AsyncIterator[UpstreamEventStream]:
        """Open a streamed turn. Errors before the first byte raise UpstreamError (after retries, within the
        total deadline); after that, `events()` raises UpstreamError(kind="stream") when the stream breaks,
        stalls past UPSTREAM_IDLE_TIMEOUT between events, or outlives UPSTREAM_TOTAL_TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.upstream_total_timeout
        observe.call_started()
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._send_with_retries(body, stream=True)
        except UpstreamError:
            observe.call_ended()
            raise
        except TimeoutError:
            observe.failed("timeout", None)
            observe.call_ended()
            raise UpstreamError("OpenRouter did not start streaming within the total timeout", kind="timeout") from None
        del body  # sent: not kept for the minutes the stream may last
        try:
            answer = await self._answer_instead_of_stream(response)
            yield UpstreamEventStream(
                response,
                idle_timeout=self._settings.upstream_idle_timeout,
                deadline=deadline,
                secret=self._secret,
                answer=answer,
                max_bytes=None if self._max_answer is None else self._max_answer * _STREAM_BYTES_PER_ANSWER_BYTE,
            )
        finally:
            observe.call_ended()
            await response.aclose()

    async def _answer_instead_of_stream(self, response: httpx.Response) -> dict[str, Any] | None:
        """A JSON body where events were asked for (a gateway's error, a provider that does not stream): read as
        a non-streamed answer, so its error or its output is not taken for a stream cut short."""
        if not response.headers.get("content-type", "").lower().startswith("application/json"):
            return None
        await self._read(response)
        try:
            return self._answer(response)
        except UpstreamError as error:
            observe.failed(error.kind, error.upstream_status)
            raise


def generation_id(response: httpx.Response) -> str | None:
    """OpenRouter's id for the generation (`X-Generation-Id`), kept as the response's upstream id."""
    value = response.headers.get("x-generation-id")
    return value.strip() if value and value.strip() else None


class UpstreamEventStream:
    """One open upstream stream: its events, normalized (see service.upstream.sse), in arrival order. `answer`:
    the upstream answered with a whole Response instead, given as the one terminal event that carries it."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        idle_timeout: float,
        deadline: float,
        secret: str | None = None,
        answer: dict[str, Any] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.response = response
        self._idle_timeout = idle_timeout
        self._deadline = deadline
        self._secret = secret
        self._answer = answer
        self._max_bytes = max_bytes

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        read = 0
        try:
            async for chunk in self.response.aiter_bytes():
                read += len(chunk)
                if self._max_bytes is not None and read > self._max_bytes:
                    raise UpstreamError(f"OpenRouter's stream passed {self._max_bytes} bytes", kind="stream")
                yield chunk
        except httpx.TimeoutException:
            raise UpstreamError("OpenRouter stopped sending in the middle of the stream", kind="stream") from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"The OpenRouter stream was cut ({type(exc).__name__})", kind="stream") from None
        except httpx.DecodingError:
            raise UpstreamError(_NOT_DECODABLE, kind="stream") from None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        if self._answer is not None:
            ended_by = {"failed": "response.failed", "incomplete": "response.incomplete"}
            yield {
                "type": ended_by.get(str(self._answer.get("status")), "response.completed"),
                "response": self._answer,
            }
            return
        source = iter_sse_json(self._chunks())
        watch = _QuietWatch(self._idle_timeout, self._deadline)
        redactor = StreamRedactor(self._secret) if self._secret else None
        first = True
        try:
            while True:
                try:
                    raw = await anext(source)
                except (StopAsyncIteration, UpstreamError) as end:
                    if redactor is not None:  # the text held back is the client's once the stream ends
                        for held in redactor.flush():
                            yield held
                    if isinstance(end, UpstreamError):
                        observe.failed(end.kind, None)
                        raise
                    return
                except asyncio.CancelledError:
                    if not watch.fired():
                        raise
                    reason = (
                        f"no event for {self._idle_timeout:g}s (UPSTREAM_IDLE_TIMEOUT)"
                        if watch.idle
                        else "the total timeout (UPSTREAM_TOTAL_TIMEOUT) passed"
                    )
                    if redactor is not None:
                        for held in redactor.flush():
                            yield held
                    observe.failed("stream", None)
                    raise UpstreamError(f"The OpenRouter stream was abandoned: {reason}", kind="stream") from None
                watch.touch()
                if first:
                    first = False
                    observe.first_event()
                event = normalize_event(raw)
                if event is None:
                    continue
                if redactor is None:
                    yield event
                    continue
                for redacted in redactor.feed(event):
                    yield redacted
        finally:
            watch.stop()
            await source.aclose()


class _QuietWatch:
    """Stops the task reading a stream when nothing came for `idle` seconds or the `deadline` (loop time)
    passed. One timer per quiet period, checked when it fires, instead of an asyncio.timeout around every
    event: with many concurrent streams, creating and cancelling those timers was a visible share of the
    relay's CPU (docs/benchmarks.md).
    Like asyncio.timeout it cancels the task, and `fired()` tells that cancellation from any other."""

    def __init__(self, idle: float, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._idle = idle
        self._deadline = deadline
        self._last = self._loop.time()
        self._fired = False
        self.idle = True  # what ran out: the idle time, else the total deadline
        self._handle = self._loop.call_at(self._due(), self._check)

    def _due(self) -> float:
        return min(self._last + self._idle, self._deadline)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        due = self._due()
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._fired = True
        self.idle = self._last + self._idle <= self._deadline
        self._task.cancel()

    def fired(self) -> bool:
        """In an `except CancelledError`: True when this watch cancelled the task (and nothing else did)."""
        return self._fired and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._handle.cancel()
