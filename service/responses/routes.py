"""/v1/responses: OpenAI's Responses API, stateful on top of OpenRouter's stateless one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from service.errors import InvalidRequest
from service.http import json_body, json_response, principal_of, require_tenant_key, runtime_of
from service.pagination import parse_page
from service.responses import service
from service.responses.requests import TurnRequest, parse_turn_request
from service.responses.resume import open_replay
from service.responses.runner import cancel_response

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
    if value is None or value == "":
        return -1
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest("starting_after must be an integer sequence number", param="starting_after") from None


class ResponseController(Controller):
    path = "/v1/responses"
    before_request = staticmethod(require_tenant_key)
    tags = ["responses"]  # noqa: RUF012

    @post("/", operation_id="createResponse", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> Response[Any]:
        runtime = runtime_of(request)
        body = await json_body(request)
        turn = parse_turn_request(body, max_input_items=runtime.settings.max_input_items)
        if turn.stream or turn.background:
            return await self._start_run(request, turn)
        result = await runtime.turn_context.run(principal_of(request).tenant_id, turn)
        return json_response(result)

    async def _start_run(self, request: Request[Any, Any, Any], turn: TurnRequest) -> Response[Any]:
        """stream and/or background: the turn runs in the application's runner, this request only follows it."""
        runtime = runtime_of(request)
        started = await runtime.turn_context.begin(principal_of(request).tenant_id, turn)
        snapshot = started.state.render()
        run = runtime.turns.start(started)
        if not turn.stream:
            return json_response(snapshot)
        if not turn.background:
            # Errors before the upstream's first byte are ordinary HTTP errors, as for a non-streamed turn.
            try:
                await run.wait_opened()
            except asyncio.CancelledError:
                runtime.turns.follower_left(run)
                raise
        return _sse(run.follow(-1), lambda: runtime.turns.follower_left(run))

    @get("/{response_id:str}", operation_id="getResponse")
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        stream: FromQuery[str | None] = None,
        starting_after: FromQuery[str | None] = None,
    ) -> Response[Any]:
        runtime = runtime_of(request)
        tenant_id = principal_of(request).tenant_id
        if _flag(stream, "stream"):
            frames = await open_replay(
                runtime.engine,
                runtime.turns,
                tenant_id,
                response_id,
                _sequence_number(starting_after),
                wait_limit=runtime.settings.turn_lock_ttl,
            )
            return _sse(frames)
        state = await service.get_response(runtime.engine, tenant_id, response_id)
        return json_response(state.render())

    @post("/{response_id:str}/cancel", operation_id="cancelResponse", status_code=200)
    async def cancel(self, request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[bytes]:
        runtime = runtime_of(request)
        result = await cancel_response(runtime.engine, runtime.turns, principal_of(request).tenant_id, response_id)
        return json_response(result)

    @delete("/{response_id:str}", operation_id="deleteResponse", status_code=200)
    async def remove(self, request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[bytes]:
        result = await service.delete_response(runtime_of(request).engine, principal_of(request).tenant_id, response_id)
        return json_response(result)

    @get("/{response_id:str}/input_items", operation_id="listInputItems")
    async def input_items(
        self,
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[str | None] = None,
        order: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        page = parse_page(after, limit, order)
        result = await service.list_input_items(
            runtime_of(request).engine, principal_of(request).tenant_id, response_id, page
        )
        return json_response(result)
