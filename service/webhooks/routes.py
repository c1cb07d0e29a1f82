"""/admin webhook routes: a tenant's endpoints, and the delivery log across tenants."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath

from service.http import json_body, json_response, require_admin_key, runtime_of
from service.webhooks import service


class WebhookAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012

    @post("/tenants/{tenant:str}/webhooks", operation_id="adminCreateWebhookEndpoint", status_code=200)
    async def create(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """Body: url (http or https), events (response.completed, response.failed, response.cancelled,
        response.incomplete). The answer's `secret` (whsec_...) verifies signatures; it is shown only this once."""
        runtime = runtime_of(request)
        body = await json_body(request)
        return json_response(await service.create_endpoint(runtime.engine, runtime.settings, tenant, body))

    @get("/tenants/{tenant:str}/webhooks", operation_id="adminListWebhookEndpoints")
    async def list_endpoints(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """The tenant's endpoints (never their secrets)."""
        return json_response(await service.list_endpoints(runtime_of(request).engine, tenant))

    @delete(
        "/tenants/{tenant:str}/webhooks/{endpoint_id:str}", operation_id="adminDeleteWebhookEndpoint", status_code=200
    )
    async def remove(
        self, request: Request[Any, Any, Any], tenant: FromPath[str], endpoint_id: FromPath[str]
    ) -> Response[bytes]:
        """Remove an endpoint; its pending deliveries go with it."""
        return json_response(await service.delete_endpoint(runtime_of(request).engine, tenant, endpoint_id))

    @get("/webhook-deliveries", operation_id="adminListWebhookDeliveries")
    async def deliveries(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Deliveries newest first, each with its attempts (time, status code, error, duration). Filters: tenant,
        state (pending, delivered, failed); pages: limit 1-100, before = the previous page's next_before."""
        query = list(request.query_params.multi_items())
        return json_response(await service.list_deliveries(runtime_of(request).engine, query))
