"""/admin: every tenant's threads, responses, usage and API keys, for admin keys only (ADMIN_API_KEY or a key
created with admin=true); tenant keys get 403.

Query parameters are read as a whole (service/admin/params.py) so that `metadata[KEY]=VALUE` filters work and an
unknown or repeated parameter is a 400 naming it rather than silently ignored; each route documents them with a
query Struct from service/admin/schemas.py."""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, QueryParams, RawBody

from service.admin import service
from service.admin.schemas import (
    AdminConversationDetail,
    AdminConversationList,
    AdminDeletedConversation,
    AdminDeletedThread,
    AdminResponseList,
    AdminStats,
    AdminThreadDetail,
    AdminThreadList,
    ApiKeyList,
    ConversationDetailQuery,
    ConversationFilters,
    CreateApiKeyBody,
    CreatedApiKey,
    KeyListQuery,
    ResponseFilters,
    RevokedApiKey,
    StatsWindow,
    ThreadDetailQuery,
    ThreadFilters,
)
from service.http import EngineDep, RuntimeDep, json_response, require_admin_key
from service.jsonbody import decode_object
from service.openapi import ADMIN_AUTH, documented
from service.threads import service as threads


class AdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH

    @get(
        "/conversations",
        operation_id="adminListConversations",
        operation_class=documented(answer=AdminConversationList, query=ConversationFilters, errors=(400, 403)),
    )
    async def list_conversations(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Every tenant's conversations, newest activity first. A thread's `last_status` is its running turn's
        while one runs, else its last finished turn's."""
        return json_response(await service.list_conversations(engine, list(query.multi_items())))

    @get(
        "/conversations/{conversation_id:str}",
        operation_id="adminGetConversation",
        operation_class=documented(
            answer=AdminConversationDetail, query=ConversationDetailQuery, errors=(400, 403, 404)
        ),
    )
    async def get_conversation(
        self, engine: EngineDep, query: QueryParams, conversation_id: FromPath[str]
    ) -> Response[bytes]:
        """One conversation with a page of its items (oldest first by default) and its newest responses
        (continue with /admin/responses?conversation=ID&cursor=...)."""
        return json_response(await service.get_conversation(engine, conversation_id, list(query.multi_items())))

    @delete(
        "/conversations/{conversation_id:str}",
        operation_id="adminDeleteConversation",
        status_code=200,
        operation_class=documented(answer=AdminDeletedConversation, errors=(403, 404, 409)),
    )
    async def delete_conversation(self, engine: EngineDep, conversation_id: FromPath[str]) -> Response[bytes]:
        """Hard delete: the conversation, its items, its responses and the response chains built on them."""
        return json_response(await threads.delete_conversation_thread(engine, conversation_id))

    @get(
        "/threads",
        operation_id="adminListThreads",
        operation_class=documented(answer=AdminThreadList, query=ThreadFilters, errors=(400, 403)),
    )
    async def list_threads(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Every thread of both kinds, newest activity first: conversations and chains of responses linked by
        previous_response_id (`kind`; a chain is named by its first response's id, and a chain continuing a
        conversation's response is in the conversation's thread). `q` searches the items of both kinds."""
        return json_response(await threads.list_threads(engine, list(query.multi_items())))

    @get(
        "/threads/{thread_id:str}",
        operation_id="adminGetThread",
        operation_class=documented(answer=AdminThreadDetail, query=ThreadDetailQuery, errors=(400, 403, 404)),
    )
    async def get_thread(self, engine: EngineDep, query: QueryParams, thread_id: FromPath[str]) -> Response[bytes]:
        """One thread and a page of its responses as a tree, oldest first: each names its parent
        (previous_response_id) and carries its input and output items."""
        return json_response(await threads.get_thread(engine, thread_id, list(query.multi_items())))

    @delete(
        "/threads/{thread_id:str}",
        operation_id="adminDeleteThread",
        status_code=200,
        operation_class=documented(answer=AdminDeletedThread, errors=(403, 404, 409)),
    )
    async def delete_thread(self, engine: EngineDep, thread_id: FromPath[str]) -> Response[bytes]:
        """Hard delete of a whole thread: every response and item of it, with their event logs and idempotency
        records, and the conversation or the chain. 409 while a turn runs in it."""
        return json_response(await threads.delete_thread(engine, thread_id))

    @get(
        "/responses",
        operation_id="adminListResponses",
        operation_class=documented(answer=AdminResponseList, query=ResponseFilters, errors=(400, 403)),
    )
    async def list_responses(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Responses across tenants, newest first."""
        return json_response(await service.list_responses(engine, list(query.multi_items())))

    @get(
        "/stats",
        operation_id="adminStats",
        operation_class=documented(answer=AdminStats, query=StatsWindow, errors=(400, 403)),
    )
    async def stats(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Response counts by status and usage totals, per tenant, per model and in total, plus conversations
        created, over created_after/created_before (default: all time)."""
        return json_response(await service.stats(engine, list(query.multi_items())))


class AdminKeyController(Controller):
    path = "/admin/api-keys"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH

    @post(
        "/",
        operation_id="adminCreateApiKey",
        status_code=200,
        operation_class=documented(body=CreateApiKeyBody, answer=CreatedApiKey, errors=(400, 403)),
    )
    async def create(self, engine: EngineDep, body: RawBody) -> Response[bytes]:
        """The answer's `key` is the secret, shown only this once; only its SHA-256 is stored."""
        return json_response(await service.create_api_key(engine, decode_object(body)))

    @get(
        "/",
        operation_id="adminListApiKeys",
        operation_class=documented(answer=ApiKeyList, query=KeyListQuery, errors=(400, 403)),
    )
    async def list_keys(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Every key, never the secret."""
        return json_response(await service.list_api_keys(engine, list(query.multi_items())))

    @delete(
        "/{key_id:str}",
        operation_id="adminRevokeApiKey",
        status_code=200,
        operation_class=documented(answer=RevokedApiKey, errors=(403, 404)),
    )
    async def revoke(self, runtime: RuntimeDep, key_id: FromPath[str]) -> Response[bytes]:
        return json_response(await service.revoke_api_key(runtime.engine, runtime.authenticator, key_id))
