"""Refusals at the door, before a handler runs: a path or query string holding U+0000, an encoded slash in an id,
a compressed body.

No id the service issues contains U+0000 and PostgreSQL's text cannot hold it, so such a path names nothing
(404, as an unknown id) and such a query value can match nothing (400 naming the parameter)."""

from __future__ import annotations

import html
from urllib.parse import parse_qsl

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from service.errors import InvalidRequest, NotFound, ServiceError


def _query_param_with_nul(query: bytes) -> str | None:
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "")
    return None


# Routes whose path segments are ids the service issues, none of which contains "/". The server decodes the path
# before routing, so an encoded slash would split an id into two segments and reach another route
# (`POST /v1/conversations/%2F`, an update, would create a conversation). Model ids do contain "/".
_ISSUED_ID_ROUTES = (b"/v1/responses/", b"/v1/conversations/")


def refusal(scope: Scope) -> ServiceError | None:
    if "\x00" in scope["path"]:
        return NotFound("Not found: no id contains U+0000")
    raw_path: bytes = scope.get("raw_path") or b""
    if b"%2" in raw_path and b"%2f" in raw_path.lower() and raw_path.startswith(_ISSUED_ID_ROUTES):
        return NotFound("Not found: no id contains '/'")
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        name = _query_param_with_nul(query)
        if name is not None:
            return InvalidRequest(f"Query parameter '{name}' must not contain U+0000", param=name)
    for header, value in scope["headers"]:
        if header == b"content-encoding" and any(
            coding.strip().lower() not in (b"", b"identity") for coding in value.split(b",")
        ):
            # Read as it came, a gzip body was refused as "not valid UTF-8", which does not say what to change.
            coding = value.decode("latin-1").strip()[:40]
            return InvalidRequest(
                f"Content-Encoding {coding!r} is not supported: send the body uncompressed",
                code="unsupported_content_encoding",
                status_code=415,
                headers={"Accept-Encoding": "identity"},  # what RFC 9110 asks of a 415 for an encoding
            )
    return None


def _wants_html(scope: Scope) -> bool:
    """A browser navigating (the admin console's pages) asks for HTML first; API clients ask for JSON or */*."""
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return value.split(b",", 1)[0].strip().lower().startswith(b"text/html")
    return False


def _html_page(error: ServiceError) -> bytes:
    message = html.escape(error.message)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{error.status_code}</title></head>'
        f'<body><main><p role="alert">{message}</p></main></body></html>'
    ).encode()


async def send_error(send: Send, error: ServiceError, *, as_html: bool = False) -> None:
    if as_html:  # as the console's own pages: nothing loaded, never framed
        body = _html_page(error)
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        ]
    else:
        body = msgspec.json.encode(error.envelope())
        headers = [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DoorMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        error = refusal(scope)
        if error is not None:
            await send_error(send, error, as_html=_wants_html(scope))
            return
        await next_app(scope, receive, send)
