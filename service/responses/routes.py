"""/v1/responses: OpenAI's Responses API, stateful on top of OpenRouter's stateless one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, RawBody
from litestar.response import Stream

from service.errors import InvalidRequest
from service.http import CallerDep, check_include, json_response, require_tenant_key
from service.idempotency.progress import IDEMPOTENT, note_stream
from service.jsonbody import decode_object
from service.limits.turns import TurnSlot
from service.observability import turns as observe_turns
from service.openapi import TENANT_AUTH, documented
from service.pagination import client_integer, parse_page
from service.responses import service
from service.responses.requests import TurnRequest, parse_turn_request
from service.responses.resume import open_replay
from service.responses.runner import cancel_response
from service.responses.schemas import (
    CreateResponse,
    DeletedResponse,
    ResponseItemList,
    ResponseStreamEvent,
    RetrieveResponseQuery,
)
from service.responses.schemas import Response as ResponseObject
from service.responses.status import Status
from service.responses.turn import INTERRUPTED_ERROR
from service.runtime import Runtime
from service.schemas import ItemPageQuery

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _client_stream(
    frames: AsyncIterator[bytes], on_early_exit: Callable[[], None] | None
) -> AsyncIterator[bytes]:
    """Relays a run's frames to one client. Litestar cancels this when the client disconnects: only the
    subscription ends, never the run (unless `on_early_exit` decides so)."""
    finished = False
    try:
        async for chunk in frames:
            yield chunk
        finished = True
    finally:
        if not finished and on_early_exit is not None:
            on_early_exit()


def _sse(frames: AsyncIterator[bytes], on_early_exit: Callable[[], None] | None = None) -> Stream:
    return Stream(_client_stream(frames, on_early_exit), media_type="text/event-stream", headers=_SSE_HEADERS)


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in {"", "false", "0"}:
        return False
    if value.lower() in {"true", "1"}:
        return True
    raise InvalidRequest(f"{name} must be true or false", param=name)


def _sequence_number(value: str | None) -> int:
    """The event to resume after (-1: from the start)."""
    if value is None or value == "":
        return -1
    number = client_integer(value)
    if number is None:
        raise InvalidRequest("starting_after must be an integer sequence number", param="starting_after")
    return number


class ResponseController(Controller):
    path = "/v1/responses"
    before_request = staticmethod(require_tenant_key)
    tags = ["responses"]  # noqa: RUF012
    security = TENANT_AUTH

    @post(
        "/",
        operation_id="createResponse",
        opt=IDEMPOTENT,
        status_code=200,
        operation_class=documented(
            body=CreateResponse,
            answer=ResponseObject,
            stream_events=ResponseStreamEvent,
            errors=(400, 404, 409, 413, 422, 429, 502, 504),
        ),
    )
    async def create(self, caller: CallerDep, body: RawBody) -> Response[Any]:
        runtime, tenant_id = caller.runtime, caller.tenant_id
        turn = parse_turn_request(decode_object(body), max_input_items=runtime.settings.max_input_items)
        await runtime.turn_context.windows.check_input(tenant_id, turn.input_items)
        observe_turns.turn_requested(turn)
        with runtime.limits.admit_turn(caller.principal) as slot:
            if turn.stream or turn.background:
                return await self._start_run(runtime, tenant_id, turn, slot)
            result = await runtime.turn_context.run(tenant_id, turn)
        return json_response(result)

    async def _start_run(self, runtime: Runtime, tenant_id: str, turn: TurnRequest, slot: TurnSlot) -> Response[Any]:
        """stream and/or background: the turn runs in the application's runner, this request only follows it."""
        started = await runtime.turn_context.begin(tenant_id, turn)
        try:
            snapshot = started.state.render()
            run = runtime.turns.start(started)
        except BaseException:
            # Nothing runs the turn: it ends here, or its claim would hold the conversation until TURN_LOCK_TTL.
            await asyncio.shield(runtime.turn_context.fail(started, INTERRUPTED_ERROR))
            raise
        slot.hand_to(run.task)
        if turn.background:  # its run has not started yet: OpenAI's polling loop waits on queued and in_progress
            snapshot["status"] = Status.QUEUED
        if not turn.stream:
            return json_response(snapshot)
        if not turn.background:
            # Errors before the upstream's first byte are ordinary HTTP errors, as for a non-streamed turn, for up
            # to SSE_KEEPALIVE_SECONDS. An upstream slower to start (its retries, a provider's queue) gets the
            # stream started, with response.created and keep-alives, rather than a connection silent for minutes
            # that a proxy would close; an error then ends the stream with response.failed.
            try:
                await asyncio.wait_for(run.wait_opened(), timeout=runtime.settings.sse_keepalive_seconds)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                runtime.turns.follower_left(run)
                raise
        note_stream(response_id=started.state.id, unstored=None if turn.store else run)
        return _sse(run.follow(-1), lambda: runtime.turns.follower_left(run))

    @get(
        "/{response_id:str}",
        operation_id="getResponse",
        operation_class=documented(
            answer=ResponseObject, query=RetrieveResponseQuery, stream_events=ResponseStreamEvent, errors=(400, 404)
        ),
    )
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        caller: CallerDep,
        response_id: FromPath[str],
        *,
        stream: FromQuery[str | None] = None,
        starting_after: FromQuery[str | None] = None,
        include_obfuscation: FromQuery[str | None] = None,
    ) -> Response[Any]:
        check_include(request)
        runtime, tenant_id = caller.runtime, caller.tenant_id
        after = _sequence_number(starting_after)  # checked without stream too: a typo is not silently ignored
        _flag(include_obfuscation, "include_obfuscation")  # OpenAI's padding of deltas, which these events never carry
        if _flag(stream, "stream"):
            frames = await open_replay(
                runtime.engine, runtime.turns, tenant_id, response_id, after, bus=runtime.cluster.bus
            )
            return _sse(frames)
        state = await service.get_response(runtime.engine, tenant_id, response_id)
        return json_response(state.render())

    @post(
        "/{response_id:str}/cancel",
        operation_id="cancelResponse",
        status_code=200,
        operation_class=documented(answer=ResponseObject, errors=(400, 404, 409)),
    )
    async def cancel(self, caller: CallerDep, response_id: FromPath[str]) -> Response[bytes]:
        runtime = caller.runtime
        bus = runtime.cluster.bus  # a response run by another process is cancelled there
        return json_response(await cancel_response(runtime.engine, runtime.turns, bus, caller.tenant_id, response_id))

    @delete(
        "/{response_id:str}",
        operation_id="deleteResponse",
        status_code=200,
        operation_class=documented(answer=DeletedResponse, errors=(404, 409)),
    )
    async def remove(self, caller: CallerDep, response_id: FromPath[str]) -> Response[bytes]:
        return json_response(await service.delete_response(caller.engine, caller.tenant_id, response_id))

    @get(
        "/{response_id:str}/input_items",
        operation_id="listInputItems",
        operation_class=documented(answer=ResponseItemList, query=ItemPageQuery, errors=(400, 404)),
    )
    async def input_items(
        self,
        *,
        request: Request[Any, Any, Any],
        caller: CallerDep,
        response_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[str | None] = None,
        order: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        check_include(request)
        page = parse_page(after, limit, order)
        return json_response(await service.list_input_items(caller.engine, caller.tenant_id, response_id, page))
