"""/v1/conversations: OpenAI's Conversations API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, RawBody

from service.conversations import service
from service.conversations.schemas import (
    ConversationItem,
    ConversationItemList,
    ConversationResource,
    CreateConversationBody,
    CreateConversationItemsBody,
    DeletedConversationResource,
    UpdateConversationBody,
)
from service.http import CallerDep, check_include, json_response, require_tenant_key
from service.idempotency.progress import IDEMPOTENT, note_created
from service.jsonbody import decode_object
from service.openapi import TENANT_AUTH, documented
from service.pagination import parse_page
from service.schemas import ItemPageQuery


class ConversationController(Controller):
    path = "/v1/conversations"
    before_request = staticmethod(require_tenant_key)
    tags = ["conversations"]  # noqa: RUF012
    security = TENANT_AUTH

    @post(
        "/",
        operation_id="createConversation",
        opt=IDEMPOTENT,
        status_code=200,
        operation_class=documented(body=CreateConversationBody, answer=ConversationResource, errors=(400, 404, 422)),
    )
    async def create(self, caller: CallerDep, body: RawBody) -> Response[bytes]:
        payload = decode_object(body)
        windows = caller.runtime.turn_context.windows
        await windows.check_items(caller.tenant_id, payload.get("items"), param="items")
        caps = caller.runtime.settings.conversation_caps
        created = await service.create_conversation(caller.engine, caller.tenant_id, payload, caps=caps)
        note_created(conversation_id=created["id"])
        return json_response(created)

    @get(
        "/{conversation_id:str}",
        operation_id="getConversation",
        operation_class=documented(answer=ConversationResource, errors=(404,)),
    )
    async def retrieve(self, caller: CallerDep, conversation_id: FromPath[str]) -> Response[bytes]:
        return json_response(await service.get_conversation(caller.engine, caller.tenant_id, conversation_id))

    @post(
        "/{conversation_id:str}",
        operation_id="updateConversation",
        status_code=200,
        operation_class=documented(body=UpdateConversationBody, answer=ConversationResource, errors=(400, 404)),
    )
    async def update(self, caller: CallerDep, conversation_id: FromPath[str], body: RawBody) -> Response[bytes]:
        payload = decode_object(body)
        return json_response(
            await service.update_conversation(caller.engine, caller.tenant_id, conversation_id, payload)
        )

    @delete(
        "/{conversation_id:str}",
        operation_id="deleteConversation",
        status_code=200,
        operation_class=documented(answer=DeletedConversationResource, errors=(404, 409)),
    )
    async def remove(self, caller: CallerDep, conversation_id: FromPath[str]) -> Response[bytes]:
        return json_response(await service.delete_conversation(caller.engine, caller.tenant_id, conversation_id))

    @post(
        "/{conversation_id:str}/items",
        operation_id="createConversationItems",
        opt=IDEMPOTENT,
        status_code=200,
        operation_class=documented(
            body=CreateConversationItemsBody, answer=ConversationItemList, errors=(400, 404, 409, 422)
        ),
    )
    async def add_items(
        self, request: Request[Any, Any, Any], caller: CallerDep, conversation_id: FromPath[str], body: RawBody
    ) -> Response[bytes]:
        check_include(request)
        payload = decode_object(body)
        runtime, tenant_id = caller.runtime, caller.tenant_id
        await runtime.turn_context.windows.check_items(tenant_id, payload.get("items"), param="items")
        caps = runtime.settings.conversation_caps
        note_created(conversation_id=conversation_id)
        return json_response(await service.add_items(runtime.engine, tenant_id, conversation_id, payload, caps=caps))

    @get(
        "/{conversation_id:str}/items",
        operation_id="listConversationItems",
        operation_class=documented(answer=ConversationItemList, query=ItemPageQuery, errors=(400, 404)),
    )
    async def list_items(
        self,
        *,
        request: Request[Any, Any, Any],
        caller: CallerDep,
        conversation_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[str | None] = None,
        order: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        check_include(request)
        page = parse_page(after, limit, order)
        return json_response(await service.list_items(caller.engine, caller.tenant_id, conversation_id, page))

    @get(
        "/{conversation_id:str}/items/{item_id:str}",
        operation_id="getConversationItem",
        operation_class=documented(answer=ConversationItem, errors=(400, 404)),
    )
    async def get_item(
        self, request: Request[Any, Any, Any], caller: CallerDep, conversation_id: FromPath[str], item_id: FromPath[str]
    ) -> Response[bytes]:
        check_include(request)
        return json_response(await service.get_item(caller.engine, caller.tenant_id, conversation_id, item_id))

    @delete(
        "/{conversation_id:str}/items/{item_id:str}",
        operation_id="deleteConversationItem",
        status_code=200,
        operation_class=documented(answer=ConversationResource, errors=(404, 409)),
    )
    async def delete_item(
        self, caller: CallerDep, conversation_id: FromPath[str], item_id: FromPath[str]
    ) -> Response[bytes]:
        return json_response(await service.delete_item(caller.engine, caller.tenant_id, conversation_id, item_id))
