"""/v1/conversations/{id}/export, /v1/conversations/import and /v1/conversations/{id}/fork; the admin side's
export (everything, a tenant, a conversation) and import into a tenant."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, RawBody
from litestar.response import Stream

from service.conversations.schemas import ConversationResource
from service.http import CallerDep, EngineDep, RuntimeDep, json_response, require_admin_key, require_tenant_key
from service.idempotency.progress import IDEMPOTENT, note_created
from service.jsonbody import decode_object
from service.lifecycle import backup, jsonl, service
from service.lifecycle.schemas import (
    AdminExportLine,
    AdminExportQuery,
    ConversationExportLine,
    ConversationImportResult,
    ForkConversationBody,
)
from service.openapi import ADMIN_AUTH, TENANT_AUTH, documented


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
    async def export(self, caller: CallerDep, conversation_id: FromPath[str]) -> Stream:
        """The conversation as JSON Lines: line 1 `{"object": "conversation", "id", "created_at", "metadata"}`,
        then each item in order as stored (the items API shows the same, completed for clients)."""
        lines = await service.open_export(caller.engine, caller.tenant_id, conversation_id)
        return Stream(lines, media_type=jsonl.MEDIA_TYPE)

    @post(
        "/import",
        operation_id="importConversation",
        opt=IDEMPOTENT,
        status_code=200,
        operation_class=documented(
            body=ConversationExportLine,
            body_media_type=jsonl.MEDIA_TYPE,
            answer=ConversationResource,
            errors=(400, 413, 415),
        ),
    )
    async def import_(self, request: Request[Any, Any, Any], caller: CallerDep) -> Response[bytes]:
        """Body: an exported conversation (`Content-Type: application/jsonl`). Creates a new conversation with
        new ids and everything else as in the file, or, for any bad line, nothing (400 naming the line). A
        compaction item must be one sealed for this tenant, as when it is added to a conversation."""
        service.check_media_type(request.headers.get("content-type"))
        raw = await request.body()
        windows = caller.runtime.turn_context.windows

        async def check(tenant: str, items: list[Any]) -> None:
            await windows.check_items(tenant, items, param="items")

        caps = caller.runtime.settings.conversation_caps
        created = await service.import_conversation(caller.engine, caller.tenant_id, raw, caps=caps, check=check)
        note_created(conversation_id=created["id"])
        return json_response(created)

    @post(
        "/{conversation_id:str}/fork",
        operation_id="forkConversation",
        opt=IDEMPOTENT,
        status_code=200,
        operation_class=documented(body=ForkConversationBody, answer=ConversationResource, errors=(400, 404)),
    )
    async def fork(self, caller: CallerDep, conversation_id: FromPath[str], body: RawBody) -> Response[bytes]:
        """Body: `item_id` (the last item kept) and optional `metadata` (default: the source's). A new
        conversation with copies of the items up to that one; the source is untouched."""
        payload = decode_object(body)
        caps = caller.runtime.settings.conversation_caps
        created = await service.fork_conversation(caller.engine, caller.tenant_id, conversation_id, payload, caps=caps)
        note_created(conversation_id=created["id"])
        return json_response(created)


class ConversationBackupAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH

    @get(
        "/export",
        operation_id="adminExport",
        media_type=jsonl.MEDIA_TYPE,
        operation_class=documented(
            answer=AdminExportLine, query=AdminExportQuery, media_type=jsonl.MEDIA_TYPE, errors=(400, 403, 404)
        ),
    )
    async def export(
        self, engine: EngineDep, tenant: FromQuery[str | None] = None, conversation: FromQuery[str | None] = None
    ) -> Stream:
        """Everything, one tenant's conversations (`tenant`=NAME or ID) or one conversation (`conversation`=ID) as JSON
        Lines: each conversation's header (with its `tenant`) then its items, streamed in constant memory."""
        lines = await backup.open_export(engine, tenant=tenant, conversation_id=conversation)
        return Stream(lines, media_type=jsonl.MEDIA_TYPE)

    @post(
        "/tenants/{tenant:str}/import",
        operation_id="adminImport",
        status_code=200,
        operation_class=documented(
            body=AdminExportLine,
            body_media_type=jsonl.MEDIA_TYPE,
            answer=ConversationImportResult,
            errors=(400, 403, 404, 413, 415),
        ),
    )
    async def import_(
        self, request: Request[Any, Any, Any], runtime: RuntimeDep, tenant: FromPath[str]
    ) -> Response[bytes]:
        """Body: one or more exported conversations (`Content-Type: application/jsonl`), all imported into the
        tenant with new ids in one transaction, or none (400 naming the first bad line)."""
        service.check_media_type(request.headers.get("content-type"))
        raw = await request.body()
        caps = runtime.settings.conversation_caps
        resealer = await runtime.turn_context.windows.sealer.resealer()
        return json_response(await backup.import_for_tenant(runtime.engine, tenant, raw, caps=caps, resealer=resealer))
