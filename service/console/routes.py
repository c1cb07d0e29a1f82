"""/admin/ui: the console's pages. Every page reads and writes through the admin API's own service functions
(service/admin/service.py) with the same parameters and rules, so tenancy and validation are the same as on
/admin; an error the admin API would answer is shown on the page with the same status."""

from __future__ import annotations

import math
import re
import secrets
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath

from service.admin import service
from service.admin.params import RESPONSE_STATUSES
from service.console import signed_out
from service.console.render import render
from service.console.session import COOKIE, LOGIN_COOKIE, Session, SessionSigner
from service.errors import ServiceError
from service.http import RuntimeDep
from service.keys.service import hash_key
from service.limits.rates import TokenBuckets, retry_after_header
from service.observability.record import note_tenant
from service.retention import service as retention
from service.runtime import Runtime
from service.threads import service as threads

BASE = "/admin/ui"
# Pages hold tenants' conversations: never cached, never framed, nothing loaded from elsewhere, no script.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
_CONSOLE_ONLY = frozenset({"live", "deleted"})
_AN_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
# A thread page's parameter for a page of older responses (the admin API's next_cursor of its newest ones).
RESPONSES_CURSOR = "responses_cursor"
LOGIN_MAX_AGE = 600
# Ten wrong guesses from one address, then one every six seconds.
_FAILED_SIGN_IN_BURST = 10
_FAILED_SIGN_INS_PER_SECOND = 1 / 6


class SignInRequired(Exception):
    """Raised by a page whose visitor has no valid session: answered with a redirect to the sign-in form."""


class FormRejected(Exception):
    """A form without this session's CSRF token (forged, or from an expired session)."""


def _signer(request: Request[Any, Any, Any], runtime: Runtime) -> SessionSigner:
    state = request.app.state
    signer: SessionSigner | None = state.get("console_signer")
    if signer is None:
        settings = runtime.settings
        # Without CONSOLE_SESSION_SECRET sessions last until this process restarts (`serve` sets one for all
        # its workers).
        secret = settings.console_session_secret or secrets.token_urlsafe(32)
        signer = state["console_signer"] = SessionSigner(secret, settings.console_session_hours)
    return signer


def _failed_sign_ins(request: Request[Any, Any, Any]) -> TokenBuckets:
    """Failed sign-ins per client address, in this process: ADMIN_API_KEY is chosen by an operator (16 characters
    at the least) and the console shares its port with the API, so guesses are slowed to a few a minute."""
    state = request.app.state
    buckets: TokenBuckets | None = state.get("console_failed_sign_ins")
    if buckets is None:
        buckets = state["console_failed_sign_ins"] = TokenBuckets(_FAILED_SIGN_INS_PER_SECOND, _FAILED_SIGN_IN_BURST)
    return buckets


def _client(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client is not None else "unknown"


def _html(
    body: str, status_code: int = 200, cookies: list[Cookie] | None = None, headers: dict[str, str] | None = None
) -> Response[str]:
    return Response(
        body,
        status_code=status_code,
        media_type="text/html",
        headers={**_HEADERS, **(headers or {})},
        cookies=cookies,  # charset: litestar's
    )


def _redirect(to: str, cookies: list[Cookie] | None = None) -> Response[str]:
    return Response("", status_code=303, headers={**_HEADERS, "Location": to}, cookies=cookies)


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


async def _session(request: Request[Any, Any, Any], runtime: Runtime) -> Session:
    """The visitor's session, if it is signed, unexpired, and its credential still an admin one."""
    session = _signer(request, runtime).read(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    principal = await runtime.authenticator.authenticate_digest(session.key_digest)
    if principal is None or not principal.is_admin:
        raise SignInRequired
    if await signed_out.is_signed_out(runtime.engine, session):
        raise SignInRequired
    note_tenant("admin")
    return session


async def _read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The form's fields; FormRejected for one that cannot be read (a multipart field not in UTF-8, or in a
    charset Python does not know, made Litestar raise: a 500 for anyone, even before sign-in). The console's own
    forms are UTF-8."""
    try:
        form = await request.form()
        return {key: str(value) for key, value in form.items()}
    except (UnicodeDecodeError, LookupError, ValueError):  # LookupError: a part naming an unknown charset
        raise FormRejected from None


async def _form(request: Request[Any, Any, Any], runtime: Runtime, session: Session) -> dict[str, str]:
    fields = await _read_form(request)
    if not _signer(request, runtime).csrf_ok(session.nonce, fields.get("csrf")):
        raise FormRejected
    return fields


def _page(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    session: Session,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> Response[str]:
    csrf = _signer(request, runtime).csrf_token(session.nonce)
    body = render(template, base=BASE, csrf=csrf, page=template, signed_in=True, **context)
    return _html(body, status_code)


def _query(request: Request[Any, Any, Any], *, drop: frozenset[str] = _CONSOLE_ONLY) -> list[tuple[str, str]]:
    """The page's query as the admin API takes it: empty form fields left out, `metadata` lines as
    metadata[KEY]=VALUE."""
    pairs: list[tuple[str, str]] = []
    for key, value in request.query_params.multi_items():
        if key in drop or value.strip() == "":
            continue
        if key == "metadata":
            pairs.extend(_metadata_pairs(value))
            continue
        pairs.append((key, value.strip()))
    return pairs


def _metadata_pairs(field: str) -> list[tuple[str, str]]:
    """KEY=VALUE pairs, one a line or comma separated; a piece without `=` after a pair is part of its value (a
    value may hold commas: `note=a, b`)."""
    found: list[tuple[str, str | None]] = []  # (name, value); (text, None) for a piece that is no pair
    for line in field.splitlines():
        for number, piece in enumerate(line.split(",")):
            if not piece.strip():
                continue  # `a=b,` and `a=b,,c=d` as typed
            name, sep, wanted = piece.partition("=")
            if sep:
                found.append((name, wanted))
            elif number > 0 and found and found[-1][1] is not None:
                found[-1] = (found[-1][0], f"{found[-1][1]},{piece}")
            else:
                found.append((piece, None))
    return [
        (f"metadata[{name.strip()}]", value.strip()) if value is not None else ("metadata", name)
        for name, value in found
        if name.strip()
    ]  # the admin API says what is wrong with a piece that is no pair


class ConsoleController(Controller):
    path = BASE
    include_in_schema = False

    # -- signing in and out ---------------------------------------------------------------------------
    @get("/login")
    async def login_form(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        return self._login_page(request, runtime, None, 200)

    def _login_page(
        self,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        error: str | None,
        status_code: int,
        headers: dict[str, str] | None = None,
    ) -> Response[str]:
        marker = secrets.token_urlsafe(16)
        cookie = Cookie(
            key=LOGIN_COOKIE,
            value=marker,
            path=BASE,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            max_age=LOGIN_MAX_AGE,
        )
        token = _signer(request, runtime).csrf_token(f"login:{marker}")
        page = render("login.html", base=BASE, csrf=token, error=error, page="login")
        return _html(page, status_code, [cookie], headers)

    @post("/login", status_code=303)
    async def login(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        form = await _read_form(request)
        marker = request.cookies.get(LOGIN_COOKIE, "")
        if not marker or not _signer(request, runtime).csrf_ok(f"login:{marker}", str(form.get("csrf", ""))):
            return self._login_page(request, runtime, "The sign-in form expired; please try again.", 403)
        key = str(form.get("key", "")).strip()
        if not key:
            return self._login_page(request, runtime, "Enter the admin credential.", 400)
        failures, client = _failed_sign_ins(request), _client(request)
        # Spent before the key is looked up and given back if it is one: only looking let every sign-in sent at
        # once (all of them looking before the first lookup ended) through, a guess each.
        wait = failures.take(client)
        if wait:
            message = f"Too many failed sign-ins from this address: try again in {math.ceil(wait)} s."
            return self._login_page(request, runtime, message, 429, retry_after_header(wait))
        digest = hash_key(key)
        try:
            principal = await runtime.authenticator.authenticate_digest(digest)
        except BaseException:
            failures.give_back(client)
            raise
        if principal is None:
            return self._login_page(request, runtime, "Incorrect or revoked key.", 401)
        failures.give_back(client)
        if not principal.is_admin:
            return self._login_page(
                request, runtime, "This is a tenant key: the console needs the admin credential.", 403
            )
        signer = _signer(request, runtime)
        session = Cookie(
            key=COOKIE,
            value=signer.issue(digest),
            path=BASE,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            max_age=int(signer.lifetime),
        )
        gone = Cookie(key=LOGIN_COOKIE, value="", path=BASE, max_age=0, httponly=True, samesite="strict")
        return _redirect(f"{BASE}/", [session, gone])

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        session = await _session(request, runtime)
        await _form(request, runtime, session)
        await signed_out.sign_out(runtime.engine, session)  # a copy of the cookie opens nothing either
        return _redirect(
            f"{BASE}/login", [Cookie(key=COOKIE, value="", path=BASE, max_age=0, httponly=True, samesite="strict")]
        )

    # -- threads --------------------------------------------------------------------------------------
    @get("/")
    async def threads(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        session = await _session(request, runtime)
        query = _query(request)
        shown = dict(request.query_params.items())
        try:
            listing = await service.list_conversations(runtime.engine, query)
        except ServiceError as exc:
            return _page(
                request,
                runtime,
                session,
                "threads.html",
                exc.status_code,
                error=exc.message,
                listing=None,
                filters=shown,
                statuses=RESPONSE_STATUSES,
                next_url=None,
                live=False,
                notice=None,
            )
        next_url = None
        if listing.get("next_cursor"):
            kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "deleted")]
            next_url = f"{BASE}/?" + urlencode([*kept, ("cursor", listing["next_cursor"])])
        live = request.query_params.get("live") == "1"
        # Set by the delete's redirect; a link may carry any text, so only an id is taken for the notice.
        deleted = request.query_params.get("deleted", "")
        deleted = deleted if _AN_ID.fullmatch(deleted) else ""
        return _page(
            request,
            runtime,
            session,
            "threads.html",
            listing=listing,
            filters=shown,
            statuses=RESPONSE_STATUSES,
            next_url=next_url,
            live=live,
            error=None,
            notice=f"Deleted thread {deleted} and everything it held." if deleted else None,
        )

    @get("/threads/{conversation_id:str}")
    async def thread(
        self, request: Request[Any, Any, Any], runtime: RuntimeDep, conversation_id: FromPath[str]
    ) -> Response[str]:
        session = await _session(request, runtime)
        query = _query(request, drop=frozenset({RESPONSES_CURSOR}))
        if not any(key == "limit" for key, _ in query):
            query.append(("limit", "100"))
        responses_cursor = request.query_params.get(RESPONSES_CURSOR)
        try:
            thread = await service.get_conversation(runtime.engine, conversation_id, query)
            if responses_cursor:
                # Older responses than the newest page the thread shows, as /admin/responses pages them.
                older = [("conversation", conversation_id), ("cursor", responses_cursor)]
                thread["responses"] = await service.list_responses(runtime.engine, older)
        except ServiceError as exc:
            return _page(request, runtime, session, "error.html", exc.status_code, error=exc.message)
        items = thread["items"]
        here = f"{BASE}/threads/{conversation_id}?"
        more_url = None
        if items["has_more"]:
            following = [(k, v) for k, v in query if k != "after"] + [("after", items["last_id"])]
            more_url = here + urlencode(following)
        older_url = None
        if thread["responses"].get("next_cursor"):
            older_url = here + urlencode([(RESPONSES_CURSOR, thread["responses"]["next_cursor"])])
        return _page(request, runtime, session, "thread.html", thread=thread, more_url=more_url, older_url=older_url)

    @get("/threads/{conversation_id:str}/delete")
    async def confirm_delete(
        self, request: Request[Any, Any, Any], runtime: RuntimeDep, conversation_id: FromPath[str]
    ) -> Response[str]:
        session = await _session(request, runtime)
        try:
            # The whole thread, as the delete takes it: the conversation's turns and the previous_response_id
            # turns continuing them.
            thread = await threads.thread_to_delete(runtime.engine, conversation_id)
        except ServiceError as exc:
            return _page(request, runtime, session, "error.html", exc.status_code, error=exc.message)
        return _page(request, runtime, session, "delete.html", thread=thread)

    @post("/threads/{conversation_id:str}/delete", status_code=303)
    async def delete(
        self, request: Request[Any, Any, Any], runtime: RuntimeDep, conversation_id: FromPath[str]
    ) -> Response[str]:
        session = await _session(request, runtime)
        form = await _form(request, runtime, session)
        if form.get("confirm") != conversation_id:
            return _page(
                request, runtime, session, "error.html", 400, error="Type the thread's id to confirm the deletion."
            )
        try:
            await threads.delete_conversation_thread(runtime.engine, conversation_id)
        except ServiceError as exc:
            return _page(request, runtime, session, "error.html", exc.status_code, error=exc.message)
        return _redirect(f"{BASE}/?" + urlencode({"deleted": conversation_id}))

    # -- stats ----------------------------------------------------------------------------------------
    @get("/stats")
    async def stats(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        session = await _session(request, runtime)
        try:
            stats = await service.stats(runtime.engine, _query(request))
        except ServiceError as exc:
            return _page(
                request,
                runtime,
                session,
                "stats.html",
                exc.status_code,
                error=exc.message,
                stats=None,
                filters=dict(request.query_params.items()),
            )
        return _page(
            request, runtime, session, "stats.html", stats=stats, filters=dict(request.query_params.items()), error=None
        )

    # -- API keys -------------------------------------------------------------------------------------
    async def _keys_page(
        self,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        session: Session,
        status_code: int = 200,
        **context: Any,
    ) -> Response[str]:
        listing = await service.list_api_keys(runtime.engine, [])
        context.setdefault("error", None)
        context.setdefault("created", None)
        context.setdefault("notice", None)
        return _page(request, runtime, session, "keys.html", status_code, keys=listing["data"], **context)

    @get("/keys")
    async def keys(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        return await self._keys_page(request, runtime, await _session(request, runtime))

    @post("/keys", status_code=200)
    async def create_key(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        session = await _session(request, runtime)
        form = await _form(request, runtime, session)
        body: dict[str, Any] = {
            "tenant": form.get("tenant", ""),
            "name": form.get("name", ""),
            "admin": form.get("admin") == "on",
        }
        try:
            created = await service.create_api_key(runtime.engine, body)
        except ServiceError as exc:
            return await self._keys_page(request, runtime, session, exc.status_code, error=exc.message)
        # The secret appears in this one answer (not cached: no-store), never again.
        return await self._keys_page(request, runtime, session, created=created)

    @post("/keys/{key_id:str}/revoke", status_code=200)
    async def revoke_key(
        self, request: Request[Any, Any, Any], runtime: RuntimeDep, key_id: FromPath[str]
    ) -> Response[str]:
        session = await _session(request, runtime)
        await _form(request, runtime, session)
        try:
            await service.revoke_api_key(runtime.engine, runtime.authenticator, key_id)
        except ServiceError as exc:
            return await self._keys_page(request, runtime, session, exc.status_code, error=exc.message)
        return await self._keys_page(request, runtime, session, notice=f"Revoked key {key_id}.")

    # -- retention ------------------------------------------------------------------------------------
    async def _retention_page(
        self,
        request: Request[Any, Any, Any],
        runtime: Runtime,
        session: Session,
        tenant: str,
        *,
        status_code: int = 200,
        error: str | None = None,
        notice: str | None = None,
    ) -> Response[str]:
        policy = preview = None
        if tenant:
            try:
                policy = await retention.get_policy(runtime.engine, runtime.settings, tenant)
                preview = await retention.preview(runtime.engine, runtime.settings, tenant)
            except ServiceError as exc:
                status_code, error = exc.status_code, exc.message
        context = {"tenant": tenant, "policy": policy, "preview": preview, "error": error, "notice": notice}
        return _page(request, runtime, session, "retention.html", status_code, **context)

    @get("/retention")
    async def retention_page(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        session = await _session(request, runtime)
        tenant = request.query_params.get("tenant", "").strip()
        return await self._retention_page(request, runtime, session, tenant)

    @post("/retention", status_code=200)
    async def set_retention(self, request: Request[Any, Any, Any], runtime: RuntimeDep) -> Response[str]:
        """The policy form: an empty field keeps forever (null); anything else goes to the admin API's checks."""
        session = await _session(request, runtime)
        form = await _form(request, runtime, session)
        tenant = form.get("tenant", "").strip()
        body: dict[str, Any] = {}
        for field in ("responses_days", "conversations_idle_days"):
            raw = form.get(field, "").strip()
            # ASCII digits only, and few: int() refused "²" (a digit to isdigit) and 4,301 digits, a 500 each.
            body[field] = None if raw == "" else int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else raw
        try:
            await retention.put_policy(runtime.engine, tenant, body)
        except ServiceError as exc:
            return await self._retention_page(
                request, runtime, session, tenant, status_code=exc.status_code, error=exc.message
            )
        return await self._retention_page(request, runtime, session, tenant, notice=f"Saved {tenant}'s retention.")


def _sign_in_required(request: Request[Any, Any, Any], _: Exception) -> Response[str]:
    return _redirect(f"{BASE}/login")


def _form_rejected(request: Request[Any, Any, Any], _: Exception) -> Response[str]:
    message = "This form expired or did not come from this console. Reload the page and try again."
    return _html(render("error.html", base=BASE, csrf="", page="error", error=message), 403)


ConsoleController.exception_handlers = {SignInRequired: _sign_in_required, FormRejected: _form_rejected}
