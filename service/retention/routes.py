"""/admin retention routes: a tenant's policy (GET/PUT/DELETE), its dry-run preview, a run now, the job state."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath

from service.http import json_body, json_response, require_admin_key, runtime_of
from service.retention import service


class RetentionAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012

    @get("/tenants/{tenant:str}/retention", operation_id="adminGetRetentionPolicy")
    async def get_policy(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """The tenant's retention: its own policy (source "tenant"), else the service-wide defaults ("default")."""
        runtime = runtime_of(request)
        return json_response(await service.get_policy(runtime.engine, runtime.settings, tenant))

    @put("/tenants/{tenant:str}/retention", operation_id="adminPutRetentionPolicy", status_code=200)
    async def put_policy(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """Body: {"responses_days": N|null, "conversations_idle_days": N|null}, N >= 1 days, null keeps forever."""
        body = await json_body(request)
        return json_response(await service.put_policy(runtime_of(request).engine, tenant, body))

    @delete("/tenants/{tenant:str}/retention", operation_id="adminDeleteRetentionPolicy", status_code=200)
    async def delete_policy(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """Remove the tenant's own policy: the service-wide defaults apply again."""
        runtime = runtime_of(request)
        return json_response(await service.delete_policy(runtime.engine, runtime.settings, tenant))

    @get("/tenants/{tenant:str}/retention/preview", operation_id="adminPreviewRetention")
    async def preview(self, request: Request[Any, Any, Any], tenant: FromPath[str]) -> Response[bytes]:
        """What the tenant's policy would delete now: {"responses": N, "conversations": N, "items": N}."""
        runtime = runtime_of(request)
        return json_response(await service.preview(runtime.engine, runtime.settings, tenant))

    @post("/retention/run", operation_id="adminRunRetention", status_code=200)
    async def run(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Apply every tenant's retention now and answer what was deleted; 409 while a run is under way."""
        runtime = runtime_of(request)
        return json_response(await service.run_now(runtime.engine, runtime.settings))

    @get("/retention", operation_id="adminRetentionState")
    async def state(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """The defaults, whether a run is under way, and the last run's counts."""
        runtime = runtime_of(request)
        return json_response(await service.state(runtime.engine, runtime.settings))
