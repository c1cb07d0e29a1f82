"""The Idempotency-Key middleware for the routes that create things (POST /v1/responses, POST /v1/conversations,
POST /v1/conversations/{id}/items, and the import and fork of a conversation): each declares `opt=IDEMPOTENT`
and records what it created through the progress context; the middleware knows no route.

For a request carrying the header, scoped to the caller's tenant:
- the key is claimed (row inserted `in_progress`) before the handler runs;
- the same key with the same route and body replays the stored answer (status, headers, body) with
  `Idempotent-Replayed: true`, without running the handler again. A stored turn's stream is not copied: its
  replay is the whole stream read from the response (service/idempotency/replay.py), also when the first client
  left early; a turn whose outcome waited for the database replays that outcome once stored, not the 503;
- the same key while its first request still runs gets 409 `idempotency_key_in_use`;
- the same key with another route or body gets 422 `idempotency_key_mismatch`;
- a key longer than 255 characters (or empty) gets 400 `invalid_idempotency_key`.

Which answers are kept: every success, and every error given after the request started work that must not run
twice (a turn claimed and sent upstream: see service.idempotency.progress). An error given before any effect
(validation, 404, 409 conversation_locked, 503 database unavailable) is not kept, like Stripe: the key is
released and a retry with it runs afresh. A request without a valid tenant key is passed through untouched so
the route's authentication answers 401/403 as usual. Keys are kept IDEMPOTENCY_KEY_TTL seconds (24 h), then purged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster import running
from service.cluster.bus import Bus
from service.errors import CLIENT_LEFT_MESSAGE, InvalidRequest, PayloadTooLarge, two_headers
from service.idempotency import service as idempotency
from service.idempotency.progress import EffectTracker, tracking
from service.idempotency.replay import is_event_stream, send_from_response, send_stored
from service.keys.service import KeyAuthenticator, Principal, bearer_secret
from service.limits.policy import Limits
from service.observability.record import note_response_id, note_tenant
from service.responses.runner import TurnRunner

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
_NOT_REPLAYED_HEADERS = frozenset({"date", "server", "set-cookie", "connection", "transfer-encoding"})


@dataclass(frozen=True)
class KeyedServing:
    """What the middleware needs of the running application, given to it by the lifespan (service/app.py)."""

    engine: AsyncEngine
    answers: idempotency.AnswerStore  # owned by the lifespan, closed at shutdown
    authenticator: KeyAuthenticator  # the caller's tenant, found as the route's authentication finds it
    limits: Limits  # a request over its tenant's rate is refused before its key is claimed
    keep_seconds: float  # IDEMPOTENCY_KEY_TTL
    # TURN_LOCK_TTL: a key whose holder stayed silent this long is taken over; a replay follows a turn still
    # running (here or in another process: `runs`, `bus`) for as long.
    turn_lock_ttl: float
    holder_process: str  # this process, named on the keys it claims
    runs: TurnRunner
    bus: Bus


class _ClientGone(Exception):
    pass


def _values(scope: Scope, name: bytes) -> list[str]:
    values: list[str] = []
    for key, value in scope["headers"]:
        if key.lower() == name:
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(value.decode("latin-1"))
    return values


def _header(scope: Scope, name: bytes) -> str | None:
    values = _values(scope, name)
    if len(values) > 1:
        raise two_headers(name.decode().title())
    return values[0] if values else None


def _validated_key(raw: str) -> str:
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters (got {len(key)})",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return key


async def _caller(authenticator: KeyAuthenticator, scope: Scope) -> Principal | None:
    """The caller, a tenant's, resolved the way the route's authentication does; None lets it refuse the request."""
    secret = bearer_secret(_header(scope, b"authorization") or "")
    if secret is None:
        return None
    principal = await authenticator.authenticate(secret)
    return principal if principal is not None and principal.tenant_id else None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("Request body is too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("Request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """Hand the handler the body we already read, then the real channel (to notice a disconnect)."""
    delivered = False

    async def replay() -> Any:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Recorder:
    """Wraps `send`: forwards the answer as it goes (a stream reaches the client live) and keeps a copy of
    any answer but a stream (the response's event log, or the run, has it); the key is completed before the
    last chunk is forwarded, so a client that has the whole answer can retry and get the replay."""

    def __init__(
        self,
        *,
        send: Send,
        answers: idempotency.AnswerStore,
        claim: idempotency.Claim,
        tracker: EffectTracker,
    ) -> None:
        self._send = send
        self._tracker = tracker
        self._answers = answers
        self._claim = claim
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.chunks: list[bytes] = []
        self.streamed = False  # the answer is an event stream, read back from its turn rather than copied
        self.concluded = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in message.get("headers", [])
                if name.decode("latin-1").lower() not in _NOT_REPLAYED_HEADERS
            ]
            tracker = self._tracker
            self.streamed = is_event_stream(self.headers) and (
                tracker.streams_stored_response or tracker.unstored_stream is not None
            )
        elif message["type"] == "http.response.body":
            if not self.streamed:
                self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False) and not self.concluded:
                await asyncio.shield(self.conclude())
        await self._send(message)

    async def conclude(self) -> None:
        """Store the answer if the request had an effect (any success counts as one), else release the key.
        Without an answer after an effect (the process is being torn down) the key stays in_progress: once its
        holder is taken for dead, or its TURN_LOCK_TTL has passed, it is completed from its stored turn, or
        freed when there is none (service/idempotency/repository.py)."""
        self.concluded = True
        started = self._tracker.started
        status = self.status
        if status is not None and (started or status < 400):
            await self._answers.store_answer(self._claim, await self._answer(status))
        elif not started:
            await self._answers.release(self._claim)

    async def _answer(self, status: int) -> idempotency.Answer:
        tracker = self._tracker
        created = (tracker.response_id, tracker.conversation_id)
        if self.streamed and tracker.unstored_stream is not None:
            # store=false: no event log to replay from; the run's own frames, once it has ended (a first client
            # that left early does not cut the replay short).
            whole = await tracker.unstored_stream.packed_stream()
            # The run's task copied this request's context (and so this tracker): a tracker left holding the run
            # is a cycle that keeps the whole stream until a full collection (service/gc_freeze.py).
            tracker.unstored_stream = None
            return idempotency.Answer(status, self.headers, whole, *created, packed=True)
        if self.streamed:
            return idempotency.Answer(status, self.headers, b"", *created, answer_response_id=tracker.response_id)
        body = b"".join(self.chunks)
        if tracker.outcome_deferred and tracker.response_id is not None:
            return idempotency.Answer(status, self.headers, body, None, created[1], tracker.response_id)
        return idempotency.Answer(status, self.headers, body, *created)


class IdempotencyMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, *, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._serving: KeyedServing | None = None

    def serve(self, serving: KeyedServing) -> None:
        """Called by the lifespan once what the middleware needs is built, before the first request."""
        self._serving = serving

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        declared = getattr(scope.get("route_handler"), "opt", None) or {}
        keys = _values(scope, HEADER) if declared.get("idempotent") else []
        if not keys:
            await next_app(scope, receive, send)
            return
        serving = self._serving
        assert serving is not None, "the lifespan gives the middleware what it serves with"
        caller = await _caller(serving.authenticator, scope)
        if caller is None:
            await next_app(scope, receive, send)
            return
        if len(keys) > 1:  # once the caller is known: a caller without a valid key is told that first
            raise two_headers("Idempotency-Key")
        raw_key = keys[0]
        tenant_id = caller.tenant_id
        serving.limits.refuse_beyond_rate(tenant_id)  # before the key is claimed: a refused flood writes nothing
        key = _validated_key(raw_key)
        try:
            body = await _read_body(scope, receive, self.max_body_bytes)
        except _ClientGone:
            # As errors.py answers an unkeyed request whose client left: counted as the client's, not as a 500
            # (returning with nothing sent was one, of no tenant, in the access log and the metrics).
            note_tenant(caller.tenant_name)
            raise InvalidRequest(CLIENT_LEFT_MESSAGE, code="client_disconnected") from None
        path = scope["path"].rstrip("/") or "/"
        method = str(scope.get("method", "POST"))
        request = idempotency.KeyedRequest(tenant_id, key, method, path, idempotency.fingerprint(method, path, body))
        outcome = await idempotency.begin(
            serving.engine,
            request,
            keep_seconds=serving.keep_seconds,
            stale_after_seconds=serving.turn_lock_ttl,
            holder_process=serving.holder_process,
        )
        if isinstance(outcome, idempotency.StoredAnswer):
            # Answered here, the route never runs: its log line names the caller and the response all the same.
            note_tenant(caller.tenant_name)
            note_response_id(outcome.response_id or outcome.answer_response_id)
            if outcome.answer_response_id is None:
                await send_stored(send, outcome)
            else:
                await send_from_response(
                    request,
                    outcome,
                    send,
                    engine=serving.engine,
                    runs=serving.runs,
                    bus=serving.bus,
                )
            return
        # Held while the request runs, so that the heartbeat renews the key's deadline (service/cluster).
        running.hold_key(serving.engine, tenant_id, key)
        try:
            with tracking(key) as tracker:
                recorder = _Recorder(send=send, answers=serving.answers, claim=outcome, tracker=tracker)
                try:
                    await next_app(scope, _replaying(body, receive), recorder.send)
                finally:
                    if not recorder.concluded:
                        await asyncio.shield(recorder.conclude())
        finally:
            running.let_go_key(serving.engine, tenant_id, key)
