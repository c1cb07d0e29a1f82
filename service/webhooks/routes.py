"""/admin webhook routes: a tenant's endpoints, and the delivery log across tenants."""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.params import FromPath, QueryParams, RawBody

from service.http import EngineDep, RuntimeDep, json_response, require_admin_key
from service.jsonbody import decode_object
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

_ADMIN_ERRORS = (403, 404)


class WebhookAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH

    @post(
        "/tenants/{tenant:str}/webhooks",
        operation_id="adminCreateWebhookEndpoint",
        status_code=200,
        operation_class=documented(
            body=CreateWebhookEndpointBody, answer=CreatedWebhookEndpoint, errors=(400, *_ADMIN_ERRORS)
        ),
    )
    async def create(self, runtime: RuntimeDep, tenant: FromPath[str], body: RawBody) -> Response[bytes]:
        """Body: url (http or https), events (response.completed, response.failed, response.cancelled,
        response.incomplete). The answer's `secret` (whsec_...) verifies signatures; it is shown only this once."""
        payload = decode_object(body)
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
    async def deliveries(self, engine: EngineDep, query: QueryParams) -> Response[bytes]:
        """Deliveries newest first, each with its attempts (time, status code, error, duration). Filters: tenant,
        state (pending, delivered, failed); pages: limit 1-100, before = the previous page's next_before."""
        return json_response(await service.list_deliveries(engine, list(query.multi_items())))
