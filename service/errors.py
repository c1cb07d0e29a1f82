"""One error hierarchy, rendered by one handler as OpenAI's envelope:
{"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.observability.record import note_error_code

logger = logging.getLogger("service.errors")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class StreamBrokenOff(Exception):
    """A response already started cannot be finished as it should: the connection is dropped, so that the client
    sees the body end early rather than a complete-looking part of it; the message goes to the log
    (service/limits/slow_readers.py)."""


class ServiceError(Exception):
    status_code = 400
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.error_type = error_type or error_type_for(self.status_code)
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)


class InvalidRequest(ServiceError):
    status_code = 400


def two_headers(name: str) -> InvalidRequest:
    """A header a request may carry once, carried twice: which one a proxy in front of us read is anybody's guess,
    so neither is used."""
    return InvalidRequest(f"Send one {name} header, not several", param=name, code="duplicate_header")


def refuse_unknown_fields(fields: Iterable[str], known: Iterable[str]) -> None:
    """Our own routes' bodies and queries are strict: a misspelt optional field (`metdata`) would otherwise be
    dropped in silence and its default used."""
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise InvalidRequest(f"Unknown parameter: {unknown[0]}", param=unknown[0], code="unknown_parameter")


class AuthenticationFailed(ServiceError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDenied(ServiceError):
    status_code = 403
    code = "insufficient_permissions"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409


class Unprocessable(ServiceError):
    status_code = 422


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "service_unavailable"


# Messages name what the client sent (an id, a value): one of any length would be echoed whole.
MAX_MESSAGE_CHARS = 2000


def error_envelope(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def handle_service_error(_: Request[Any, Any, Any], exc: ServiceError) -> Response[bytes]:
    note_error_code(exc.code)
    return _json(exc.status_code, exc.envelope(), exc.headers or None)


# What litestar raises when the client goes before its body was read: not a server error (no client reads the
# answer; the access log and the metrics count it as the client's).
_CLIENT_LEFT = "client disconnected prematurely"
CLIENT_LEFT_MESSAGE = "The client closed the connection before its body was sent"


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    param = None
    code: str | None = None
    message = exc.detail or "Request failed"
    if status == 500 and exc.detail == _CLIENT_LEFT:
        status, code, message = 400, "client_disconnected", CLIENT_LEFT_MESSAGE
    if isinstance(exc, NotFoundException):
        code = "not_found"
        if message == "Not Found":
            message = "No such route"
    elif isinstance(exc, MethodNotAllowedException):
        code = "method_not_allowed"
    elif isinstance(exc, NotAuthorizedException):
        code = "invalid_api_key"
    elif isinstance(exc, PermissionDeniedException):
        code = "insufficient_permissions"
    elif status == 413:
        code = "payload_too_large"
        message = "Request body is too large"
    elif isinstance(exc, ValidationException):
        code = "invalid_request"
        extra = exc.extra if isinstance(exc.extra, list) else []
        if extra and isinstance(extra[0], dict):
            param = extra[0].get("key")
            detail = extra[0].get("message")
            if detail:
                message = f"Invalid value for {param}: {detail}" if param else str(detail)
    note_error_code(code)
    # The router names the route's methods on a 405 (`allow`), which RFC 9110 requires the answer to carry.
    allow = (exc.headers or {}).get("allow") if isinstance(exc, MethodNotAllowedException) else None
    return _json(
        status, error_envelope(message, error_type_for(status), param, code), {"Allow": allow} if allow else None
    )


# asyncpg's own errors for a connection that is gone or a server that is stopping, starting or full.
_DRIVER_UNAVAILABLE = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
# Refusals PostgreSQL gives only when a connection is opened: the database was dropped or renamed, the role or
# its password was refused. Not the request's fault, and a retry succeeds once the operator mends it.
_CONNECT_REFUSED = (asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError)


def _driver_error(exc: DBAPIError) -> BaseException | None:
    """asyncpg's exception under SQLAlchemy's: its adapter's error (`orig`) was raised from asyncpg's."""
    return None if exc.orig is None else exc.orig.__cause__ or exc.orig


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the error means PostgreSQL could not be reached, or no pooled connection was free in time
    (as opposed to a bad query): a retry later can succeed."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, _DRIVER_UNAVAILABLE):  # raised by statements sent on the driver connection
        return True
    # SQLAlchemy does not translate what asyncpg raises while it connects: a connection refused at start-up (a
    # pooler in transaction mode refusing a session setting, a server starting) comes wrapped as a plain DBAPIError.
    if isinstance(exc, DBAPIError) and isinstance(_driver_error(exc), _DRIVER_UNAVAILABLE):
        return True
    if isinstance(_driver_error(exc) if isinstance(exc, DBAPIError) else exc, _CONNECT_REFUSED):
        return True
    return isinstance(exc, OSError | ConnectionError)


# PostgreSQL rolled the request's transaction back to let a concurrent one go on: a deadlock between two of them,
# or a serialization failure. The request changed nothing, and the same request sent again succeeds.
_CONCURRENT_CHANGE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def concurrent_change(exc: BaseException) -> BaseException | None:
    """The driver's error when PostgreSQL rolled the transaction back for a concurrent one, else None. `exc` is
    SQLAlchemy's error, or asyncpg's own from a statement sent on the driver connection."""
    driver = _driver_error(exc) if isinstance(exc, DBAPIError) else exc
    return driver if isinstance(driver, _CONCURRENT_CHANGE) else None


def is_transient(exc: BaseException) -> bool:
    """True when the same work, tried again, can succeed: the database was unavailable, or PostgreSQL rolled the
    transaction back for a concurrent one (so it changed nothing)."""
    return is_database_unavailable(exc) or concurrent_change(exc) is not None


def _retry_later(status: int, message: str, code: str) -> Response[bytes]:
    """A request that changed nothing and may be sent again as it was."""
    note_error_code(code)
    return _json(status, error_envelope(message, error_type_for(status), None, code), {"Retry-After": "1"})


def first_line(exc: BaseException) -> str:
    cause = _driver_error(exc) if isinstance(exc, DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return lines[0][:200] if lines else type(cause).__name__


def handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    rolled_back = concurrent_change(exc)
    if rolled_back is not None:
        logger.warning("rolled back for a concurrent change: %s", type(rolled_back).__name__)
        return _retry_later(
            409,
            "Another request changed the same data at the same time; nothing was changed. Retry the request.",
            "concurrent_change",
        )
    if is_database_unavailable(exc):
        # The driver's own words too: a refusal that lasts (a pooler refusing a setting, a dropped database)
        # must be told from an outage in the log.
        logger.warning("database unavailable: %s: %s", type(exc).__name__, first_line(exc))
        return _retry_later(
            503,
            "The database is unavailable or overloaded; nothing was changed. Retry shortly.",
            "database_unavailable",
        )
    note_error_code("internal_error")
    logger.exception("unhandled error")
    return _json(500, error_envelope("Internal server error", "server_error", None, "internal_error"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ServiceError: handle_service_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
