"""Request-boundary helpers shared by the route modules: authentication, the dependencies handlers are given
(`caller` on tenant routes, `runtime` or `engine` on the others), JSON out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import AuthenticationFailed, PermissionDenied, two_headers
from service.keys.service import Principal, bearer_secret
from service.observability.record import note_tenant
from service.responses.parameters import check_include_values
from service.runtime import Runtime

_PRINCIPAL = "principal"


def _runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def _engine(runtime: NamedDependency[Runtime]) -> AsyncEngine:
    return runtime.engine


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls a tenant route (the key the before_request hook authenticated) and the runtime serving them.

    A handler takes this one dependency rather than several: Litestar resolves sibling dependencies concurrently,
    in an anyio task group with a task each (litestar#4563), and that was a measurable share of a turn's CPU.
    Bodies come the same way for the same reason: as the raw `body: bytes` kwarg, decoded by the handler
    (service/jsonbody.py)."""

    runtime: Runtime
    principal: Principal

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def engine(self) -> AsyncEngine:
        return self.runtime.engine


def _caller(request: Request[Any, Any, Any]) -> Caller:
    return Caller(_runtime_of(request), request.state[_PRINCIPAL])


# Given to every handler that names them as parameters (`caller: CallerDep`); the app registers them once. A
# handler names one of them at most (see Caller).
RuntimeDep = NamedDependency[Runtime]
EngineDep = NamedDependency[AsyncEngine]
CallerDep = NamedDependency[Caller]
DEPENDENCIES = {
    "runtime": Provide(_runtime, sync_to_thread=False),
    "engine": Provide(_engine, sync_to_thread=False),
    "caller": Provide(_caller, sync_to_thread=False),
}


def check_include(request: Request[Any, Any, Any]) -> None:
    """A read's `include` (`include[]`, as OpenAI's SDK sends it): its values are checked as on POST /v1/responses.
    What is stored is shown whatever it asks for."""
    query = request.query_params
    values = [*query.getall("include", []), *query.getall("include[]", [])]
    if values:
        check_include_values(values)


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    headers = connection.headers.getall("authorization", [])
    if len(headers) > 1:
        raise two_headers("Authorization")
    header = headers[0] if headers else ""
    secret = bearer_secret(header)
    if secret is None:
        # A key sent without the scheme (or with another one) is not "missing": say what is wrong with it.
        what = "The Authorization header holds no Bearer key" if header.strip() else "Missing API key"
        raise AuthenticationFailed(f"{what}: send it as 'Authorization: Bearer <key>'", code="missing_api_key")
    return secret


async def _authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = await _runtime_of(connection).authenticator.authenticate(_bearer(connection))
    if principal is None:
        # Never echo the key back, not even a prefix.
        raise AuthenticationFailed("Incorrect or revoked API key provided")
    connection.state[_PRINCIPAL] = principal
    note_tenant(principal.tenant_name or ("admin" if principal.is_admin else None))
    return principal


# The routes authenticate in a before_request hook rather than a guard: Litestar hands each guard call a copy of
# the route handler object, a visible share of a turn's CPU. The hook runs at the same point (after routing,
# before the body and parameters are read), and what it raises is answered the same way.
async def require_tenant_key(request: Request[Any, Any, Any]) -> None:
    principal = await _authenticate(request)
    if not principal.tenant_id:
        raise PermissionDenied("ADMIN_API_KEY is for /admin routes only; use a tenant key for /v1")
    _runtime_of(request).limits.check_request(principal)


async def require_admin_key(request: Request[Any, Any, Any]) -> None:
    principal = await _authenticate(request)
    if not principal.is_admin:
        raise PermissionDenied("This route needs an admin key")


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(content),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
