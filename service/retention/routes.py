"""/admin retention routes: a tenant's policy (GET/PUT/DELETE), its dry-run preview, a run now, the job state."""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post, put
from litestar.params import FromPath, RawBody

from service.http import EngineDep, RuntimeDep, json_response, require_admin_key
from service.jsonbody import decode_object
from service.openapi import ADMIN_AUTH, documented
from service.retention import service
from service.retention.schemas import (
    RetentionPolicy,
    RetentionPolicyBody,
    RetentionPreview,
    RetentionRun,
    RetentionState,
)

_ADMIN_ERRORS = (403, 404)


class RetentionAdminController(Controller):
    path = "/admin"
    before_request = staticmethod(require_admin_key)
    tags = ["admin"]  # noqa: RUF012
    security = ADMIN_AUTH

    @get(
        "/tenants/{tenant:str}/retention",
        operation_id="adminGetRetentionPolicy",
        operation_class=documented(answer=RetentionPolicy, errors=_ADMIN_ERRORS),
    )
    async def get_policy(self, runtime: RuntimeDep, tenant: FromPath[str]) -> Response[bytes]:
        """The tenant's retention: its own policy (source "tenant"), else the service-wide defaults ("default")."""
        return json_response(await service.get_policy(runtime.engine, runtime.settings, tenant))

    @put(
        "/tenants/{tenant:str}/retention",
        operation_id="adminPutRetentionPolicy",
        status_code=200,
        operation_class=documented(body=RetentionPolicyBody, answer=RetentionPolicy, errors=(400, *_ADMIN_ERRORS)),
    )
    async def put_policy(self, engine: EngineDep, tenant: FromPath[str], body: RawBody) -> Response[bytes]:
        """Body: {"responses_days": N|null, "conversations_idle_days": N|null}, N >= 1 days, null keeps forever."""
        return json_response(await service.put_policy(engine, tenant, decode_object(body)))

    @delete(
        "/tenants/{tenant:str}/retention",
        operation_id="adminDeleteRetentionPolicy",
        status_code=200,
        operation_class=documented(answer=RetentionPolicy, errors=_ADMIN_ERRORS),
    )
    async def delete_policy(self, runtime: RuntimeDep, tenant: FromPath[str]) -> Response[bytes]:
        """Remove the tenant's own policy: the service-wide defaults apply again."""
        return json_response(await service.delete_policy(runtime.engine, runtime.settings, tenant))

    @get(
        "/tenants/{tenant:str}/retention/preview",
        operation_id="adminPreviewRetention",
        operation_class=documented(answer=RetentionPreview, errors=_ADMIN_ERRORS),
    )
    async def preview(self, runtime: RuntimeDep, tenant: FromPath[str]) -> Response[bytes]:
        """What the tenant's policy would delete now: {"responses": N, "conversations": N, "items": N}."""
        return json_response(await service.preview(runtime.engine, runtime.settings, tenant))

    @post(
        "/retention/run",
        operation_id="adminRunRetention",
        status_code=200,
        operation_class=documented(answer=RetentionRun, errors=(403, 409)),
    )
    async def run(self, runtime: RuntimeDep) -> Response[bytes]:
        """Apply every tenant's retention now and answer what was deleted; 409 while a run is under way."""
        process_id = runtime.cluster.heartbeat.identity.id
        return json_response(await service.run_now(runtime.engine, runtime.settings, process_id=process_id))

    @get(
        "/retention",
        operation_id="adminRetentionState",
        operation_class=documented(answer=RetentionState, errors=(403,)),
    )
    async def state(self, runtime: RuntimeDep) -> Response[bytes]:
        """The defaults, whether a run is under way, and the last run's counts."""
        return json_response(await service.state(runtime.engine, runtime.settings))
