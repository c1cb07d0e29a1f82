"""/admin: every tenant's threads, responses, usage and API keys, for admin keys only (ADMIN_API_KEY or a key
created with admin=true); tenant keys get 403.

Query parameters are read as a whole (service/admin/params.py) so that `metadata[KEY]=VALUE` filters work and an
unknown or repeated parameter is a 400 naming it rather than silently ignored."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath

from service.admin import service
from service.http import json_body, json_response, require_admin_key, runtime_of


def _query(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


class AdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012

    @get("/conversations", operation_id="adminListConversations")
    async def list_conversations(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Every tenant's conversations, newest activity first. Filters: tenant (name or id), model (last used),
        status (of the last response), created_after, created_before, updated_after, updated_before (Unix
        seconds or ISO 8601; after inclusive, before exclusive), metadata[KEY]=VALUE, q (full-text search of
        the items). Pages: limit 1-100 (default 20), cursor = the previous page's next_cursor."""
        return json_response(await service.list_conversations(runtime_of(request).engine, _query(request)))

    @get("/conversations/{conversation_id:str}", operation_id="adminGetConversation")
    async def get_conversation(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[str]
    ) -> Response[bytes]:
        """One conversation with a page of its items (after, limit, order; oldest first by default) and its
        newest responses (continue with /admin/responses?conversation=ID&cursor=...)."""
        result = await service.get_conversation(runtime_of(request).engine, conversation_id, _query(request))
        return json_response(result)

    @delete("/conversations/{conversation_id:str}", operation_id="adminDeleteConversation", status_code=200)
    async def delete_conversation(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[str]
    ) -> Response[bytes]:
        """Hard delete: the conversation, its items, its responses and the response chains built on them."""
        return json_response(await service.delete_conversation(runtime_of(request).engine, conversation_id))

    @get("/responses", operation_id="adminListResponses")
    async def list_responses(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Responses across tenants, newest first. Filters: status, model (the model that served it, else the
        one asked for), tenant, conversation, created_after, created_before. Pages as for conversations."""
        return json_response(await service.list_responses(runtime_of(request).engine, _query(request)))

    @get("/stats", operation_id="adminStats")
    async def stats(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Response counts by status and usage totals, per tenant, per model and in total, plus conversations
        created, over created_after/created_before (default: all time)."""
        return json_response(await service.stats(runtime_of(request).engine, _query(request)))


class AdminKeyController(Controller):
    path = "/admin/api-keys"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012

    @post("/", operation_id="adminCreateApiKey", status_code=200)
    async def create(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Body: tenant (created if new), name, admin. The answer's `key` is the secret, shown only this once."""
        body = await json_body(request)
        return json_response(await service.create_api_key(runtime_of(request).engine, body))

    @get("/", operation_id="adminListApiKeys")
    async def list_keys(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Every key (optionally ?tenant=NAME), never the secret."""
        return json_response(await service.list_api_keys(runtime_of(request).engine, _query(request)))

    @delete("/{key_id:str}", operation_id="adminRevokeApiKey", status_code=200)
    async def revoke(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[bytes]:
        runtime = runtime_of(request)
        return json_response(await service.revoke_api_key(runtime.engine, runtime.authenticator, key_id))
