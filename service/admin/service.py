"""Operators' view of every tenant's threads: listing with filters and search, one thread in full, hard deletion,
usage statistics, and API keys. Each operation is one short read or one short transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.admin import params, repository
from service.admin.cursor import Keyset, encode_cursor
from service.conversations.service import conversation_not_found, items_page
from service.errors import InvalidRequest, NotFound
from service.keys import service as keys

Pairs = Iterable[tuple[str, str]]
DETAIL_RESPONSES = 20


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _usage(input_tokens: int, output_tokens: int, cost: Decimal) -> dict[str, Any]:
    return {
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "total_tokens": int(input_tokens) + int(output_tokens),
        "cost": float(cost),
    }


def conversation_row_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "admin.conversation",
        "tenant": row.tenant,
        "tenant_id": row.tenant_id,
        "title": row.title,
        "metadata": row.metadata,
        "item_count": row.item_count,
        "response_count": row.response_count,
        "created_at": _epoch(row.created_at),
        "last_activity_at": _epoch(row.updated_at),
        "last_model": row.last_model,
        "last_status": row.last_status,
        "usage": _usage(row.input_tokens, row.output_tokens, row.cost),
        "deleted": row.deleted,
    }


def _milliseconds_between(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else (end - start) // timedelta(milliseconds=1)


def response_row_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "admin.response",
        "tenant": row.tenant,
        "tenant_id": row.tenant_id,
        "conversation_id": row.conversation_id,
        "thread_id": row.thread_id,
        "previous_response_id": row.previous_response_id,
        "status": row.status,
        "model": row.model,
        "upstream_model": row.upstream_model,
        "usage": _usage(row.input_tokens, row.output_tokens, row.cost),
        "error": row.error,
        "incomplete_details": row.incomplete_details,
        "background": row.background,
        "created_at": _epoch(row.created_at),
        "completed_at": _epoch(row.completed_at),
        "duration_ms": _milliseconds_between(row.created_at, row.completed_at),
        "request_id": row.request_id,
        # Hidden from its tenant (a later response builds on it) but kept as history.
        "deleted": row.deleted_at is not None,
    }


def _keyset_list(kind: str, rows: list[Any], keyset: Keyset, at: str, view: Any) -> dict[str, Any]:
    shown = rows[: keyset.limit]
    has_more = len(rows) > keyset.limit
    last = shown[-1] if shown else None
    return {
        "object": "list",
        "data": [view(row) for row in shown],
        "has_more": has_more,
        "next_cursor": encode_cursor(kind, getattr(last, at), last.id) if has_more and last is not None else None,
    }


async def listed_tenant_id(conn: AsyncConnection, tenant: str | None) -> str | None:
    """An admin listing's `tenant` filter, a name or an id: one that does not exist is a 400 `unknown_tenant`."""
    if tenant is None:
        return None
    tenant_id = await repository.find_tenant_id(conn, tenant)
    if tenant_id is None:
        raise InvalidRequest(f"No tenant with the name or id {tenant!r}", param="tenant", code="unknown_tenant")
    return tenant_id


async def list_conversations(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    filters, keyset = params.conversation_query(query)
    async with engine.connect() as conn:
        await repository.plan_each_page(conn)
        tenant_id = await listed_tenant_id(conn, filters.tenant)
        rows = await repository.conversation_page(conn, filters, tenant_id, keyset)
    return _keyset_list("conversations", rows, keyset, "updated_at", conversation_row_view)


async def _response_list(conn: AsyncConnection, filters: params.ResponseFilters, keyset: Keyset) -> dict[str, Any]:
    tenant_id = await listed_tenant_id(conn, filters.tenant)
    rows = await repository.response_page(conn, filters, tenant_id, keyset)
    return _keyset_list("responses", rows, keyset, "created_at", response_row_view)


async def list_responses(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    filters, keyset = params.response_query(query)
    async with engine.connect() as conn:
        await repository.plan_each_page(conn)
        return await _response_list(conn, filters, keyset)


async def get_conversation(engine: AsyncEngine, conversation_id: str, query: Pairs) -> dict[str, Any]:
    """The thread's row, a page of its items (`after`/`limit`/`order`, oldest first by default) and its newest
    responses; `responses.next_cursor` continues at /admin/responses?conversation=ID."""
    page = params.detail_query(query)
    async with engine.connect() as conn:
        row = await repository.get_conversation(conn, conversation_id)
        if row is None:
            raise conversation_not_found(conversation_id)
        items = await items_page(conn, conversation_id, page)
        responses = await _response_list(
            conn, params.ResponseFilters(conversation=conversation_id), Keyset(limit=DETAIL_RESPONSES)
        )
    view = conversation_row_view(row)
    view["items"] = items
    view["responses"] = responses
    return view


_EMPTY_USAGE = {
    "responses": 0,
    "by_status": dict.fromkeys(params.RESPONSE_STATUSES, 0),
    "usage": _usage(0, 0, Decimal(0)),
}


def _stats_row(row: Any) -> dict[str, Any]:
    return {
        "responses": int(row.responses),
        "by_status": {status: int(getattr(row, status)) for status in params.RESPONSE_STATUSES},
        "usage": _usage(row.input_tokens, row.output_tokens, row.cost),
    }


async def stats(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    window = params.time_range_query(query)
    async with engine.connect() as conn:
        grouped, conversation_counts = await repository.usage_stats(conn, window)
    tenants: dict[str, dict[str, Any]] = {}
    for row in conversation_counts:
        tenants[row.tenant_id] = {
            "tenant": row.tenant,
            "tenant_id": row.tenant_id,
            "conversations": int(row.conversations),
        }
    models, total = [], _EMPTY_USAGE
    for row in grouped:
        if not row.no_tenant:
            entry = tenants.setdefault(
                row.tenant_id, {"tenant": row.tenant, "tenant_id": row.tenant_id, "conversations": 0}
            )
            entry.update(_stats_row(row))
        elif not row.no_model:
            models.append({"model": row.model, **_stats_row(row)})
        else:
            total = _stats_row(row)
    by_cost = sorted(
        ({**_EMPTY_USAGE, **entry} for entry in tenants.values()),
        key=lambda e: (-e["usage"]["cost"], -e["responses"], e["tenant"]),
    )
    return {
        "object": "admin.stats",
        "created_after": _epoch(window.created_after),
        "created_before": _epoch(window.created_before),
        "total": {"conversations": sum(e["conversations"] for e in by_cost), **total},
        "tenants": by_cost,
        "models": sorted(models, key=lambda e: (-e["usage"]["cost"], -e["responses"], e["model"] or "")),
    }


_KEY_FIELDS = frozenset({"tenant", "name", "admin"})
MAX_NAME_LENGTH = 200


def key_view(row: Any) -> dict[str, Any]:
    """Never the secret: only its first characters, so operators can tell keys apart."""
    return {
        "id": row.id,
        "object": "api_key",
        "tenant": row.tenant,
        "name": row.name,
        "prefix": row.prefix,
        "admin": row.is_admin,
        "created_at": _epoch(row.created_at),
        "last_used_at": _epoch(getattr(row, "last_used_at", None)),
        "revoked_at": _epoch(getattr(row, "revoked_at", None)),
    }


def _name_field(body: dict[str, Any], field: str, *, required: bool) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRequest(f"{field} must be a non-empty string", param=field)
    if len(value) > MAX_NAME_LENGTH or "\x00" in value:
        raise InvalidRequest(f"{field} must be at most {MAX_NAME_LENGTH} characters, without U+0000", param=field)
    return value.strip()


async def create_api_key(engine: AsyncEngine, body: dict[str, Any]) -> dict[str, Any]:
    """The answer is the only place the secret ever appears (`key`); only its SHA-256 is stored."""
    unknown = sorted(set(body) - _KEY_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0]}'; expected tenant, name, admin", param=unknown[0])
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise InvalidRequest("admin must be true or false", param="admin")
    tenant = body.get("tenant")
    if not isinstance(tenant, str):
        raise InvalidRequest("tenant must be a non-empty string", param="tenant")
    created = await keys.create_key(
        engine,
        tenant=tenant,  # checked and trimmed where every tenant is created (service.keys.repository)
        name=_name_field(body, "name", required=False),
        is_admin=admin,
    )
    return {**key_view(created), "key": created.secret}


async def list_api_keys(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    tenant = params.tenant_query(query)
    rows = await keys.list_keys(engine, tenant)
    return {"object": "list", "data": [key_view(row) for row in rows], "has_more": False}


async def revoke_api_key(engine: AsyncEngine, authenticator: keys.KeyAuthenticator, key_id: str) -> dict[str, Any]:
    revoked_at = await keys.revoke(engine, key_id)
    if revoked_at is None:
        raise NotFound(f"API key with id '{key_id}' not found.")
    # This process stops accepting it at once; others within the authenticator's cache TTL.
    authenticator.forget_key(key_id)
    return {"id": key_id, "object": "api_key.revoked", "revoked": True, "revoked_at": _epoch(revoked_at)}
