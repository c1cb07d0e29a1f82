"""/v1/conversations/{id}/export, /v1/conversations/import and /v1/conversations/{id}/fork."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from service.http import json_body, json_response, principal_of, require_tenant_key, runtime_of
from service.lifecycle import jsonl, service


class ConversationLifecycleController(Controller):
    path = "/v1/conversations"
    before_request = staticmethod(require_tenant_key)
    tags = ["conversations"]  # noqa: RUF012

    @get("/{conversation_id:str}/export", operation_id="exportConversation", media_type=jsonl.MEDIA_TYPE)
    async def export(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Stream:
        """The conversation as JSON Lines: line 1 `{"object": "conversation", "id", "created_at", "metadata"}`,
        then each item in order, exactly as the items API shows it."""
        lines = await service.open_export(runtime_of(request).engine, principal_of(request).tenant_id, conversation_id)
        return Stream(lines, media_type=jsonl.MEDIA_TYPE)

    @post("/import", operation_id="importConversation", status_code=200)
    async def import_(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Body: an exported conversation (`Content-Type: application/jsonl`). Creates a new conversation with
        new ids and everything else as in the file, or, for any bad line, nothing (400 naming the line)."""
        service.check_media_type(request.headers.get("content-type"))
        raw = await request.body()
        result = await service.import_conversation(runtime_of(request).engine, principal_of(request).tenant_id, raw)
        return json_response(result)

    @post("/{conversation_id:str}/fork", operation_id="forkConversation", status_code=200)
    async def fork(self, request: Request[Any, Any, Any], conversation_id: FromPath[str]) -> Response[bytes]:
        """Body: `item_id` (the last item kept) and optional `metadata` (default: the source's). A new
        conversation with copies of the items up to that one; the source is untouched."""
        body = await json_body(request)
        result = await service.fork_conversation(
            runtime_of(request).engine, principal_of(request).tenant_id, conversation_id, body
        )
        return json_response(result)
