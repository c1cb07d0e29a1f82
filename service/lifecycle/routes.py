"""/v1/conversations/{id}/export, /v1/conversations/import and /v1/conversations/{id}/fork."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from service.conversations.schemas import ConversationResource
from service.http import EngineDep, Payload, TenantId, json_response, require_tenant_key
from service.lifecycle import jsonl, service
from service.lifecycle.schemas import ConversationExportLine, ForkConversationBody
from service.openapi import TENANT_AUTH, documented


class ConversationLifecycleController(Controller):
    path = "/v1/conversations"
    before_request = staticmethod(require_tenant_key)
    tags = ["conversations"]  # noqa: RUF012
    security = TENANT_AUTH

    @get(
        "/{conversation_id:str}/export",
        operation_id="exportConversation",
        media_type=jsonl.MEDIA_TYPE,
        operation_class=documented(answer=ConversationExportLine, media_type=jsonl.MEDIA_TYPE, errors=(404,)),
    )
    async def export(self, engine: EngineDep, tenant_id: TenantId, conversation_id: FromPath[str]) -> Stream:
        """The conversation as JSON Lines: line 1 `{"object": "conversation", "id", "created_at", "metadata"}`,
        then each item in order, exactly as the items API shows it."""
        lines = await service.open_export(engine, tenant_id, conversation_id)
        return Stream(lines, media_type=jsonl.MEDIA_TYPE)

    @post(
        "/import",
        operation_id="importConversation",
        status_code=200,
        operation_class=documented(
            body=ConversationExportLine,
            body_media_type=jsonl.MEDIA_TYPE,
            answer=ConversationResource,
            errors=(400, 413, 415),
        ),
    )
    async def import_(self, request: Request[Any, Any, Any], engine: EngineDep, tenant_id: TenantId) -> Response[bytes]:
        """Body: an exported conversation (`Content-Type: application/jsonl`). Creates a new conversation with
        new ids and everything else as in the file, or, for any bad line, nothing (400 naming the line)."""
        service.check_media_type(request.headers.get("content-type"))
        raw = await request.body()
        return json_response(await service.import_conversation(engine, tenant_id, raw))

    @post(
        "/{conversation_id:str}/fork",
        operation_id="forkConversation",
        status_code=200,
        operation_class=documented(body=ForkConversationBody, answer=ConversationResource, errors=(400, 404)),
    )
    async def fork(
        self, engine: EngineDep, tenant_id: TenantId, conversation_id: FromPath[str], payload: Payload
    ) -> Response[bytes]:
        """Body: `item_id` (the last item kept) and optional `metadata` (default: the source's). A new
        conversation with copies of the items up to that one; the source is untouched."""
        return json_response(await service.fork_conversation(engine, tenant_id, conversation_id, payload))
