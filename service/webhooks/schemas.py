"""The bodies of the admin webhook routes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

EventType = Literal["response.completed", "response.failed", "response.cancelled", "response.incomplete"]


class CreateWebhookEndpointBody(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(description="http:// or https:// URL the events are POSTed to")]
    events: Annotated[list[EventType], msgspec.Meta(min_length=1)]


class WebhookEndpoint(msgspec.Struct):
    object: Literal["webhook_endpoint"]
    id: str
    tenant: str
    url: str
    events: list[EventType]
    created_at: int


class CreatedWebhookEndpoint(msgspec.Struct):
    object: Literal["webhook_endpoint"]
    id: str
    tenant: str
    url: str
    events: list[EventType]
    created_at: int
    secret: Annotated[str, msgspec.Meta(description="whsec_...: verifies signatures; shown only in this answer")]


class WebhookEndpointList(msgspec.Struct):
    object: Literal["list"]
    data: list[WebhookEndpoint]
    has_more: bool


class DeletedWebhookEndpoint(msgspec.Struct):
    object: Literal["webhook_endpoint.deleted"]
    id: str
    deleted: bool


class WebhookAttempt(msgspec.Struct):
    attempted_at: int
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDelivery(msgspec.Struct):
    object: Literal["webhook_delivery"]
    id: int
    webhook_id: Annotated[str, msgspec.Meta(description="The event id, sent as `webhook-id` on every attempt")]
    endpoint_id: str
    tenant: str
    type: EventType
    response_id: str
    state: Literal["pending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None
    claimed_until: Annotated[
        int | None,
        msgspec.Meta(
            description="While a process is sending it (or was, until it stopped): when its claim runs out. A "
            "pending delivery past its next_attempt_at with none waits for a free send"
        ),
    ]
    delivered_at: int | None
    attempts: Annotated[list[WebhookAttempt], msgspec.Meta(description="Oldest first, by when each started")]


class WebhookDeliveryList(msgspec.Struct):
    object: Literal["list"]
    data: list[WebhookDelivery]
    has_more: bool
    next_before: int | None


class WebhookDeliveryQuery(msgspec.Struct):
    tenant: Annotated[str, msgspec.Meta(description="Only this tenant's deliveries (its name)")] | None = None
    state: Literal["pending", "delivered", "failed"] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    before: Annotated[int, msgspec.Meta(description="The previous page's next_before")] | None = None
