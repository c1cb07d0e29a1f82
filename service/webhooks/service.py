"""Admin operations on webhook endpoints and the delivery log."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.admin.service import listed_tenant_id
from service.config import Settings
from service.errors import InvalidRequest, NotFound, refuse_unknown_fields
from service.ids import new_id
from service.pagination import client_integer
from service.webhooks import repository
from service.webhooks.addresses import AddressRefused, check_url_form
from service.webhooks.signing import new_secret

Pairs = list[tuple[str, str]]
EVENT_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")
DELIVERY_STATES = ("pending", "delivered", "failed")


async def _tenant(conn: AsyncConnection, name: str) -> Any:
    row = await repository.tenant_by_name(conn, name)
    if row is None:
        raise NotFound(f"Tenant '{name}' not found.", param="tenant")
    return row


_LAST_PK = 2**63 - 1  # a bigint: past it, PostgreSQL refuses the parameter


def _integer(query: Pairs, name: str, low: int, high: int) -> int | None:
    raw = _single(query, name)
    if raw is None:
        return None
    value = client_integer(raw)  # not int(): it takes spaces and other scripts' digits
    if value is None or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer between {low} and {high}", param=name)
    return value


def _epoch(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


def endpoint_view(row: Any, tenant: str, *, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "object": "webhook_endpoint",
        "id": row.id,
        "tenant": tenant,
        "url": row.url,
        "events": list(row.events),
        "created_at": _epoch(row.created_at),
    }
    if secret is not None:
        view["secret"] = secret
    return view


def _events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(
            f"events must be a non-empty array of: {', '.join(EVENT_TYPES)}", param="events", code="invalid_value"
        )
    for index, event in enumerate(value):
        if event not in EVENT_TYPES:
            raise InvalidRequest(
                f"events[{index}] is {event!r}; expected one of {', '.join(EVENT_TYPES)}",
                param=f"events[{index}]",
                code="invalid_value",
            )
    return sorted(set(value), key=EVENT_TYPES.index)


async def create_endpoint(engine: AsyncEngine, settings: Settings, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown_fields(body, ("url", "events"))
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest("url is required", param="url", code="missing_required_parameter")
    try:
        check_url_form(url, allow_private=settings.webhook_allow_private_addresses)
    except AddressRefused as exc:
        raise InvalidRequest(str(exc), param="url", code="invalid_url") from None
    events = _events(body.get("events"))
    secret = new_secret()
    async with engine.begin() as conn:
        owner = await _tenant(conn, tenant)
        row = await repository.insert_endpoint(
            conn, {"id": new_id("whe"), "tenant_id": owner.id, "url": url, "events": events, "secret": secret}
        )
    return endpoint_view(row, owner.name, secret=secret)


async def list_endpoints(engine: AsyncEngine, tenant: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        owner = await _tenant(conn, tenant)
        rows = await repository.list_endpoints(conn, owner.id)
    return {"object": "list", "data": [endpoint_view(r, owner.name) for r in rows], "has_more": False}


async def delete_endpoint(engine: AsyncEngine, tenant: str, endpoint_id: str) -> dict[str, Any]:
    async with engine.begin() as conn:
        owner = await _tenant(conn, tenant)
        if not await repository.delete_endpoint(conn, owner.id, endpoint_id):
            raise NotFound(f"Webhook endpoint '{endpoint_id}' not found for tenant '{tenant}'.")
    return {"object": "webhook_endpoint.deleted", "id": endpoint_id, "deleted": True}


def _single(query: Pairs, name: str) -> str | None:
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise InvalidRequest(f"{name} is given more than once", param=name)
    return values[0] if values else None


async def list_deliveries(engine: AsyncEngine, query: Pairs) -> dict[str, Any]:
    """Newest first, each with its attempts; filters tenant and state; pages: limit 1-100, before (a pk)."""
    refuse_unknown_fields((k for k, _ in query), ("tenant", "state", "limit", "before"))
    state = _single(query, "state")
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidRequest(f"state must be one of {', '.join(DELIVERY_STATES)}", param="state")
    limit = _integer(query, "limit", 1, 100)
    limit = 20 if limit is None else limit
    before = _integer(query, "before", 1, _LAST_PK)
    tenant = _single(query, "tenant")
    async with engine.connect() as conn:
        tenant_id = await listed_tenant_id(conn, tenant)
        rows = await repository.list_deliveries(
            conn, tenant_id=tenant_id, state=state, before_pk=before, limit=limit + 1
        )
        page = rows[:limit]
        attempts = await repository.attempts_of(conn, [r.pk for r in page])
    by_delivery: dict[int, list[dict[str, Any]]] = {}
    for a in attempts:
        by_delivery.setdefault(a.delivery_pk, []).append(
            {
                "attempted_at": _epoch(a.attempted_at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
        )
    data = [
        {
            "object": "webhook_delivery",
            "id": r.pk,
            "webhook_id": r.event_id,
            "endpoint_id": r.endpoint_id,
            "tenant": r.tenant,
            "type": r.event_type,
            "response_id": r.response_id,
            "state": r.state,
            "created_at": _epoch(r.created_at),
            "next_attempt_at": _epoch(r.next_attempt_at),
            "claimed_until": _epoch(r.locked_until) if r.locked_until is not None and r.claimed else None,
            "delivered_at": _epoch(r.delivered_at),
            "attempts": by_delivery.get(r.pk, []),
        }
        for r in page
    ]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "next_before": page[-1].pk if len(rows) > limit else None,
    }
