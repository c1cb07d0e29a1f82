"""/admin webhook routes: a tenant's endpoints, and the delivery log across tenants."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from service.http import EngineDep, Payload, RuntimeDep, json_response, require_admin_key
from service.openapi import ADMIN_AUTH, documented
from service.webhooks import service
from service.webhooks.schemas import (
    CreatedWebhookEndpoint,
    CreateWebhookEndpointBody,
    DeletedWebhookEndpoint,
    WebhookDeliveryList,
    WebhookDeliveryQuery,
    WebhookEndpointList,
)


def _query_pairs(request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


QueryPairs = NamedDependency[list[tuple[str, str]]]
_ADMIN_ERRORS = (403, 404)


class WebhookAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH
    dependencies = {"query_pairs": Provide(_query_pairs, sync_to_thread=False)}  # noqa: RUF012

    @post(
        "/tenants/{tenant:str}/webhooks",
        operation_id="adminCreateWebhookEndpoint",
        status_code=200,
        operation_class=documented(
            body=CreateWebhookEndpointBody, answer=CreatedWebhookEndpoint, errors=(400, *_ADMIN_ERRORS)
        ),
    )
    async def create(self, runtime: RuntimeDep, tenant: FromPath[str], payload: Payload) -> Response[bytes]:
        """Body: url (http or https), events (response.completed, response.failed, response.cancelled,
        response.incomplete). The answer's `secret` (whsec_...) verifies signatures; it is shown only this once."""
        return json_response(await service.create_endpoint(runtime.engine, runtime.settings, tenant, payload))

    @get(
        "/tenants/{tenant:str}/webhooks",
        operation_id="adminListWebhookEndpoints",
        operation_class=documented(answer=WebhookEndpointList, errors=_ADMIN_ERRORS),
    )
    async def list_endpoints(self, engine: EngineDep, tenant: FromPath[str]) -> Response[bytes]:
        """The tenant's endpoints (never their secrets)."""
        return json_response(await service.list_endpoints(engine, tenant))

    @delete(
        "/tenants/{tenant:str}/webhooks/{endpoint_id:str}",
        operation_id="adminDeleteWebhookEndpoint",
        status_code=200,
        operation_class=documented(answer=DeletedWebhookEndpoint, errors=_ADMIN_ERRORS),
    )
    async def remove(self, engine: EngineDep, tenant: FromPath[str], endpoint_id: FromPath[str]) -> Response[bytes]:
        """Remove an endpoint; its pending deliveries go with it."""
        return json_response(await service.delete_endpoint(engine, tenant, endpoint_id))

    @get(
        "/webhook-deliveries",
        operation_id="adminListWebhookDeliveries",
        operation_class=documented(answer=WebhookDeliveryList, query=WebhookDeliveryQuery, errors=(400, 403, 404)),
    )
    async def deliveries(self, engine: EngineDep, query_pairs: QueryPairs) -> Response[bytes]:
        """Deliveries newest first, each with its attempts (time, status code, error, duration). Filters: tenant,
        state (pending, delivered, failed); pages: limit 1-100, before = the previous page's next_before."""
        return json_response(await service.list_deliveries(engine, query_pairs))
