"""The bodies and query parameters of /admin. Times are Unix seconds; filters accept Unix seconds or ISO 8601
(`*_after` inclusive, `*_before` exclusive)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.responses.schemas import ResponseStatus
from service.schemas import ItemObject, Metadata

Time = Annotated[str, msgspec.Meta(description="Unix seconds or an ISO 8601 date-time (UTC without an offset)")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100, description="Rows per page")]
Cursor = Annotated[str, msgspec.Meta(description="The previous page's `next_cursor`")]


class Usage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float


class AdminConversation(msgspec.Struct):
    id: str
    object: Literal["admin.conversation"]
    tenant: str
    tenant_id: str
    title: str | None
    metadata: Metadata
    item_count: int
    response_count: int
    created_at: int
    last_activity_at: int
    last_model: str | None
    last_status: ResponseStatus | None
    usage: Usage
    # Deleted by its tenant: gone for every client API and from the lists, kept (with the items before its last
    # answered response) while its responses need it as their history. Shown when asked for by id.
    deleted: bool


class AdminConversationList(msgspec.Struct):
    object: Literal["list"]
    data: list[AdminConversation]
    has_more: bool
    next_cursor: str | None


class AdminResponse(msgspec.Struct):
    id: str
    object: Literal["admin.response"]
    tenant: str
    tenant_id: str
    conversation_id: str | None
    thread_id: Annotated[
        str,
        msgspec.Meta(
            description="The thread it belongs to (`/admin/threads/{id}`): its conversation's id, or its chain's first"
            " response's. A conversation the retention purge deleted leaves its id here on the responses it kept"
        ),
    ]
    previous_response_id: str | None
    status: ResponseStatus
    model: str | None
    upstream_model: str | None
    usage: Usage
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    background: bool
    created_at: int
    completed_at: int | None
    duration_ms: Annotated[
        int | None, msgspec.Meta(description="From created_at to completed_at in milliseconds; null while it runs")
    ]
    request_id: str | None  # the X-Request-Id of the request that started the turn (its log lines carry it)
    deleted: bool


class AdminResponseList(msgspec.Struct):
    object: Literal["list"]
    data: list[AdminResponse]
    has_more: bool
    next_cursor: str | None


class AdminItemPage(msgspec.Struct):
    object: Literal["list"]
    data: list[ItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class AdminConversationDetail(AdminConversation):
    items: AdminItemPage
    responses: AdminResponseList


class AdminThread(AdminConversation, kw_only=True):
    """A thread of either kind: a conversation, or a chain of responses linked by previous_response_id (named by
    its first response's id)."""

    object: Literal["admin.thread"]  # type: ignore[assignment]
    kind: Literal["conversation", "chain"]


class AdminThreadList(msgspec.Struct):
    object: Literal["list"]
    data: list[AdminThread]
    has_more: bool
    next_cursor: str | None


class AdminThreadResponse(AdminResponse, kw_only=True):
    """A response of the thread's tree: its parent is previous_response_id."""

    input: list[ItemObject]
    output: list[ItemObject]


class AdminThreadResponseList(msgspec.Struct):
    object: Literal["list"]
    data: list[AdminThreadResponse]
    has_more: bool
    next_cursor: str | None


class AdminThreadDetail(AdminThread, kw_only=True):
    responses: AdminThreadResponseList


class AdminDeletedThread(msgspec.Struct):
    id: str
    object: Literal["admin.thread.deleted"]
    deleted: bool
    deleted_responses: int


class AdminDeletedConversation(msgspec.Struct):
    id: str
    object: Literal["conversation.deleted"]
    deleted: bool
    deleted_responses: int


class StatsEntry(msgspec.Struct):
    responses: int
    by_status: dict[str, int]
    usage: Usage


class TenantStats(StatsEntry):
    tenant: str
    tenant_id: str
    conversations: int


class ModelStats(StatsEntry):
    model: str | None


class TotalStats(StatsEntry):
    conversations: int


class AdminStats(msgspec.Struct):
    object: Literal["admin.stats"]
    created_after: int | None
    created_before: int | None
    total: TotalStats
    tenants: list[TenantStats]
    models: list[ModelStats]


class CreateApiKeyBody(msgspec.Struct, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="Created if new")]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    admin: bool = False


class ApiKey(msgspec.Struct):
    id: str
    object: Literal["api_key"]
    tenant: str | None
    name: str
    prefix: str
    admin: bool
    created_at: int
    last_used_at: int | None
    revoked_at: int | None


class CreatedApiKey(ApiKey):
    key: Annotated[str, msgspec.Meta(description="The secret, shown only in this answer")]


class ApiKeyList(msgspec.Struct):
    object: Literal["list"]
    data: list[ApiKey]
    has_more: bool


class RevokedApiKey(msgspec.Struct):
    id: str
    object: Literal["api_key.revoked"]
    revoked: bool
    revoked_at: int | None


class ConversationFilters(msgspec.Struct):
    tenant: Annotated[str, msgspec.Meta(description="Tenant name or id")] | None = None
    model: Annotated[str, msgspec.Meta(description="The model of the last finished turn")] | None = None
    status: ResponseStatus | None = None
    created_after: Time | None = None
    created_before: Time | None = None
    updated_after: Time | None = None
    updated_before: Time | None = None
    metadata: Annotated[dict[str, str], msgspec.Meta(description="`metadata[KEY]=VALUE`, up to 16")] | None = None
    q: Annotated[str, msgspec.Meta(description="Full-text search of the items")] | None = None
    limit: Limit = 20
    cursor: Cursor | None = None


class ResponseFilters(msgspec.Struct):
    status: ResponseStatus | None = None
    model: Annotated[str, msgspec.Meta(description="The model that served it, else the one asked for")] | None = None
    tenant: Annotated[str, msgspec.Meta(description="Tenant name or id")] | None = None
    conversation: str | None = None
    created_after: Time | None = None
    created_before: Time | None = None
    q: Annotated[str, msgspec.Meta(description="Full-text search of the response's input and output items")] | None = (
        None
    )
    limit: Limit = 20
    cursor: Cursor | None = None


class ThreadFilters(ConversationFilters, kw_only=True):
    kind: Literal["conversation", "chain"] | None = None


class ThreadDetailQuery(msgspec.Struct):
    limit: Limit = 20
    cursor: Annotated[str, msgspec.Meta(description="The previous page's `responses.next_cursor`")] | None = None


class ConversationDetailQuery(msgspec.Struct):
    after: str | None = None
    limit: Limit = 20
    order: Literal["asc", "desc"] = "asc"


class StatsWindow(msgspec.Struct):
    created_after: Time | None = None
    created_before: Time | None = None


class KeyListQuery(msgspec.Struct):
    tenant: Annotated[str, msgspec.Meta(description="Tenant name")] | None = None
