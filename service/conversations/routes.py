"""/v1/conversations: OpenAI's Conversations API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery

from service.conversations import service
from service.http import json_body, json_response, principal_of, require_tenant_key, runtime_of
from service.pagination import parse_page


class ConversationController(Controller):
    path = "/v1/conversations"
    before_request = staticmethod(require_tenant_key)
    tags = ["conversations"]  # noqa: RUF012

    @post("/", operation_id="createConversation", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await json_body(request)
        result = await service.create_conversation(runtime_of(request).engine, principal_of(request).tenant_id, body)
        return json_response(result)

    @get("/{conversation_id:str}", operation_id="getConversation")
    async def retrieve(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Response[bytes]:
        result = await service.get_conversation(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id
        )
        return json_response(result)

    @post("/{conversation_id:str}", operation_id="updateConversation", status_code=200)
    async def update(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Response[bytes]:
        body = await json_body(request)
        result = await service.update_conversation(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, body
        )
        return json_response(result)

    @delete("/{conversation_id:str}", operation_id="deleteConversation", status_code=200)
    async def remove(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Response[bytes]:
        result = await service.delete_conversation(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id
        )
        return json_response(result)

    @post("/{conversation_id:str}/items", operation_id="createConversationItems", status_code=200)
    async def add_items(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Response[bytes]:
        body = await json_body(request)
        result = await service.add_items(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, body
        )
        return json_response(result)

    @get("/{conversation_id:str}/items", operation_id="listConversationItems")
    async def list_items(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[str | None] = None,
        order: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        page = parse_page(after, limit, order)
        result = await service.list_items(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, page
        )
        return json_response(result)

    @get("/{conversation_id:str}/items/{item_id:str}", operation_id="getConversationItem")
    async def get_item(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[str], item_id: FromPath[str]
    ) -> Response[bytes]:
        result = await service.get_item(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, item_id
        )
        return json_response(result)

    @delete("/{conversation_id:str}/items/{item_id:str}", operation_id="deleteConversationItem", status_code=200)
    async def delete_item(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[str], item_id: FromPath[str]
    ) -> Response[bytes]:
        result = await service.delete_item(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, item_id
        )
        return json_response(result)
