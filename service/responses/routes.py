"""/v1/responses: OpenAI's Responses API, stateful on top of OpenRouter's stateless one."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery

from service.errors import InvalidRequest
from service.http import json_body, json_response, principal_of, require_tenant_key, runtime_of
from service.pagination import parse_page
from service.responses import service
from service.responses.requests import parse_turn_request


class ResponseController(Controller):
    path = "/v1/responses"
    guards = [require_tenant_key]  # noqa: RUF012
    tags = ["responses"]  # noqa: RUF012

    @post("/", operation_id="createResponse", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime = runtime_of(request)
        body = await json_body(request)
        turn = parse_turn_request(body, max_input_items=runtime.settings.max_input_items)
        if turn.stream or turn.background:
            raise InvalidRequest("stream and background are not supported yet", param="stream")
        result = await service.run_turn(
            runtime.engine,
            runtime.upstream,
            principal_of(request).tenant_id,
            turn,
            lock_ttl=runtime.settings.turn_lock_ttl,
        )
        return json_response(result)

    @get("/{response_id:str}", operation_id="getResponse")
    async def retrieve(self, request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[bytes]:
        state = await service.get_response(runtime_of(request).engine, principal_of(request).tenant_id, response_id)
        return json_response(state.render())

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
