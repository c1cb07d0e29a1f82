"""Tables. Items keep their exact JSON as text (not jsonb): jsonb refuses U+0000 and would cost a decode and
re-encode per item per turn, while text is spliced into the upstream body as is."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base

EMPTY_JSON_OBJECT = text("'{}'::jsonb")


class Tenant(Base):
    __tablename__ = "tenant"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Moved on by every statement that deletes any of the tenant's items (a trigger, see the migration
    # 2026_12_04_1420): a response chain's history changes only when an item leaves it, so a chain history
    # cached in a worker is current exactly while this has not moved (service/responses/chain_cache.py).
    history_generation: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(Text, server_default="")
    # The first characters of the secret, so operators can tell keys apart without seeing them.
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Conversation(Base):
    __tablename__ = "conversation"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=EMPTY_JSON_OBJECT)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    title: Mapped[str | None] = mapped_column(Text)
    # Positions are handed out from this counter, so appending never needs max(position).
    next_position: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    item_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    response_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default=text("0"))
    last_model: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[str | None] = mapped_column(Text)
    # The claim of the turn in flight (one writer per conversation); null when free, void once expired.
    turn_response_id: Mapped[str | None] = mapped_column(Text)
    turn_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the claim was taken: its age, the same for every process whatever its own TURN_LOCK_TTL.
    turn_claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when the retention purge starts deleting the conversation (over several transactions): from then on it
    # is deleted for every API, and the next purge run finishes it if this one stops (service/retention).
    purging_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when its tenant deleted it while responses still need its items as their history (a chain continuing
    # one of them replays what preceded it): from then on it is deleted for every API, and the row goes with its
    # last response (service/conversations/repository.py).
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # The admin listing walks (updated_at, id) backwards; each equality filter has its own copy of that order.
    __table_args__ = (
        Index(None, "tenant_id", "created_at"),
        Index(None, "updated_at", "id"),
        Index(None, "tenant_id", "updated_at", "id"),
        Index(None, "last_model", "updated_at", "id"),
        Index(None, "last_status", "updated_at", "id"),
        Index(None, "created_at", "id"),
        Index("ix_conversation_purging_since", "purging_since", postgresql_where=text("purging_since IS NOT NULL")),
        Index("ix_conversation_deleted_at", "deleted_at", postgresql_where=text("deleted_at IS NOT NULL")),
        Index(
            "ix_conversation_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )


class ResponseRecord(Base):
    __tablename__ = "response"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversation.id", ondelete="SET NULL"), index=True)
    # Where this response's context ends in its conversation: items before this position preceded it.
    conversation_position: Mapped[int | None] = mapped_column(BigInteger)
    previous_response_id: Mapped[str | None] = mapped_column(ForeignKey("response.id", ondelete="SET NULL"), index=True)
    # The thread: the conversation's id, else the parent's thread, else (a chain's first response) its own id.
    # Not a foreign key: a thread outlives a conversation its tenant deleted, until an operator deletes it.
    thread_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    upstream_model: Mapped[str | None] = mapped_column(Text)
    upstream_id: Mapped[str | None] = mapped_column(Text)
    # The service tier the upstream reported serving the turn with (the Response echoes it, else the request's).
    service_tier: Mapped[str | None] = mapped_column(Text)
    instructions: Mapped[str | None] = mapped_column(Text)
    # The generation parameters as sent by the client (exact JSON text), echoed back on the Response.
    params_json: Mapped[str] = mapped_column(Text, server_default="{}")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=EMPTY_JSON_OBJECT)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    incomplete_details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default=text("0"))
    background: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    stream: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when a later response builds on this one: it then stays as history but is gone for the client.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The X-Request-Id of the request that started the turn (service/observability): its log lines carry it too.
    request_id: Mapped[str | None] = mapped_column(Text)
    # The Idempotency-Key of that request: a key whose process died after storing the turn is answered from it.
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    # The chain whose totals do not yet count this turn: its finish found the chain's row held by another
    # statement and did not wait for it (service/threads/totals.py). NULL once counted.
    pending_chain_id: Mapped[str | None] = mapped_column(Text)

    # Admin lists walk (created_at, id) backwards, per filter; the model filter is the model that served the
    # turn, else the one asked for (what conversation.last_model records).
    __table_args__ = (
        Index(None, "tenant_id", "created_at", "id"),
        Index(None, "created_at", "id"),
        Index(None, "status", "created_at", "id"),
        Index(None, "thread_id", "created_at", "id"),
        # The turns running in a thread (few at any time): the thread listing's status of a chain.
        Index(
            "ix_response_running_thread_id",
            "thread_id",
            "created_at",
            postgresql_where=text("status IN ('queued', 'in_progress')"),
        ),
        Index("ix_response_served_model_created_at_id", text("coalesce(upstream_model, model)"), "created_at", "id"),
        # The pending turns of a chain (few, and only while its finishes come together).
        Index(
            "ix_response_pending_chain_id", "pending_chain_id", postgresql_where=text("pending_chain_id IS NOT NULL")
        ),
        # Read only for keys whose holder died: entries only for keyed turns.
        Index(
            "ix_response_idempotency_key",
            "tenant_id",
            "idempotency_key",
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class ResponseChain(Base):
    """A thread of responses linked by previous_response_id outside any conversation, under its first
    response's id: what the admin listing shows of it (kept by the turn path, as conversation's counters are).
    Goes with its first response (a tenant deleting a response with no children deletes it)."""

    __tablename__ = "response_chain"

    id: Mapped[str] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    # The first response's metadata, so `metadata[KEY]` filters both kinds of thread alike.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=EMPTY_JSON_OBJECT)
    title: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    item_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    response_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric(20, 10), server_default=text("0"))
    last_model: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[str | None] = mapped_column(Text)
    # The plain turns running in it, which store nothing before they end (responses/turn_store.py), and when
    # the latest of them is taken for dead: the listing shows in_progress from these, as it does from a
    # conversation's claim. Not indexed, so that marking a turn is a HOT update with no new index entries.
    turn_response_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    turn_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # The same keyset indexes as conversation's: the thread listing walks both in (updated_at, id) order.
    __table_args__ = (
        Index(None, "updated_at", "id"),
        Index(None, "tenant_id", "updated_at", "id"),
        Index(None, "last_model", "updated_at", "id"),
        Index(None, "last_status", "updated_at", "id"),
        Index(None, "created_at", "id"),
        Index(
            "ix_response_chain_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )


class RunningChainTurn(Base):
    """A plain turn continuing a previous response, while it runs. Such a turn stores nothing before its end
    (responses/turn_store.py), so without this row a delete of the response it continues could not see that
    something builds on it: the delete would remove it, and the turn's finish store a response detached from
    its history. The row is written by the turn's begin and removed by its finish, in their own statements; a
    delete of the previous response then only hides it, as it does for a stored child. The row lasts until
    `expires_at` (the turn's TURN_LOCK_TTL) if its process dies, when the expiry sweep removes it.

    Unlogged: it means nothing after a crash, when every turn in flight fails; the begin writes no log for it.
    No foreign key: the response it names is checked (and locked) by the begin's own read of it."""

    __tablename__ = "running_chain_turn"

    response_id: Mapped[str] = mapped_column(Text, primary_key=True)
    previous_response_id: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = ({"prefixes": ["UNLOGGED"]},)


class ResponseEventLog(Base):
    """A streamed response's events, exactly as they were sent (SSE frames), written once when the stream
    ends, so `GET /v1/responses/{id}?stream=true&starting_after=N` can replay them. Content: deleted with
    its response. `events_zlib` holds them as written now (service/responses/frame_log.py: zlib streams, one
    after the other), `events` as text, as logs written before it were; a row has one of the two."""

    __tablename__ = "response_event_log"

    response_id: Mapped[str] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"), primary_key=True)
    event_count: Mapped[int] = mapped_column(Integer)
    events: Mapped[str | None] = mapped_column(Text)
    events_zlib: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("(events IS NULL) <> (events_zlib IS NULL)", name="one_form"),)


class Item(Base):
    __tablename__ = "item"

    pk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(Text)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    # The response that carried this item as input or produced it as output; null for items added directly.
    response_id: Mapped[str | None] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"))
    is_output: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    ordinal: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"))
    position: Mapped[int | None] = mapped_column(BigInteger)
    # The thread of the conversation or response the item belongs to (response.thread_id).
    thread_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    # Plain text of the item for search, NUL removed (PostgreSQL text cannot hold it).
    text_content: Mapped[str] = mapped_column(Text, server_default="")
    # What the item costs a model as input, in tokens: as the model counted it when OpenRouter reported usage,
    # else estimated (service/context/tokens.py); null for items stored before counts were kept.
    token_count: Mapped[int | None] = mapped_column(Integer)
    # Full-text search; why `simple` and why stored: see migration 2b8f4d6e0c12 (admin listing).
    search_vector: Mapped[str | None] = mapped_column(
        TSVECTOR, Computed("to_tsvector('simple'::regconfig, text_content)", persisted=True)
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("conversation_id", "position"),
        Index(None, "response_id", "is_output", "ordinal"),
        Index(None, "conversation_id", "id"),
        Index(None, "tenant_id", "id"),
        Index(None, "thread_id"),
        Index(None, "search_vector", postgresql_using="gin"),
    )


class DeletedItemPosition(Base):
    """Where an item deleted through the items API stood in its conversation: a page cursor naming it (`after`)
    goes on from there. A client deleting a conversation's items as it pages through them (the SDK's
    auto-pagination) names the last item of the page it just deleted. Kept while the conversation is."""

    __tablename__ = "deleted_item_position"

    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(Base):
    """A client's Idempotency-Key, scoped to its tenant: the request's fingerprint, and once the request has
    finished, the answer to replay. The answer holds content, so deleting the response or conversation it
    created deletes the row too. `body_zlib` holds a store=false stream's answer, its frames packed as a stored
    event log is (service/responses/frame_log.py); `body` any other answer; a row has at most one."""

    __tablename__ = "idempotency_key"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # SHA-256 of the route and the canonical request body.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    # in_progress while the first request runs, completed once its answer is stored.
    state: Mapped[str] = mapped_column(Text)
    locked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Until when the holding request may still run (its process's TURN_LOCK_TTL): an in_progress key is taken
    # over only after it.
    held_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The service process (service_process.id) that took the key: once the reaper takes it for dead, its
    # in_progress keys are freed with its turns. No foreign key: process rows are forgotten after they stop.
    holder_process: Mapped[str | None] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_zlib: Mapped[bytes | None] = mapped_column(LargeBinary)
    response_id: Mapped[str | None] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str | None] = mapped_column(ForeignKey("conversation.id", ondelete="CASCADE"), index=True)
    # The response whose stored state is the answer, read at replay: a stream's event log, or the outcome of a
    # turn the database could not take in time (stored later; hence no foreign key).
    answer_response_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    __table_args__ = (CheckConstraint("body IS NULL OR body_zlib IS NULL", name="one_form"),)


class RetentionPolicy(Base):
    """A tenant's retention, overriding the service-wide defaults (settings); a null field keeps forever."""

    __tablename__ = "retention_policy"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    responses_days: Mapped[int | None] = mapped_column(Integer)
    conversations_idle_days: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ConsoleSessionEnd(Base):
    """A console session its operator signed out of: the cookie is signed and carries its own expiry, so a copy of
    it would open the console until then; its nonce is kept here until that expiry."""

    __tablename__ = "console_session_end"

    nonce: Mapped[str] = mapped_column(Text, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class MaintenanceLease(Base):
    """One row per background job that must run in one process at a time across the deployment (the retention
    purge): whoever holds an unexpired lease runs it. Also keeps the last run's outcome for the admin."""

    __tablename__ = "maintenance_lease"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class ServiceProcess(Base):
    """A running service process (one per uvicorn worker) and the turns it runs, rewritten at every heartbeat,
    so that any other process can fail those turns and free their claims once the heartbeats stop
    (service/cluster/)."""

    __tablename__ = "service_process"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The process's PROCESS_HEARTBEAT_TIMEOUT: others take it for dead once its heartbeat is older than that.
    heartbeat_timeout: Mapped[float] = mapped_column(Float)
    # Set when the process stopped (cleanly, or found dead): its row stays a while so that the reaper keeps
    # looking for turns it began after its last heartbeat.
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    running_responses: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    running_conversations: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    # The advisory lock the process holds on its listening connection while it lives: a process whose heartbeat
    # is late but whose lock is held is slow, not dead.
    liveness_key: Mapped[int | None] = mapped_column(BigInteger)
    # Its TURN_LOCK_TTL: the reaper's backstop waits for the longest any process declared.
    turn_lock_ttl: Mapped[float | None] = mapped_column(Float)
    # The migration head its code was written for; null from a release before the column. During a rolling
    # upgrade, newer processes write what older live ones can read (service/cluster/repository.py).
    code_revision: Mapped[str | None] = mapped_column(Text)


class ServiceSecret(Base):
    """Secrets the service makes for itself at first need and shares between its processes: the key that seals
    compaction items (service/context/sealing.py), unless COMPACTION_KEY gives one."""

    __tablename__ = "service_secret"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ResponseLiveFrame(Base):
    """A batch of a running stream's frames, copied while a process other than the one running it follows it
    (service/cluster/live_frames.py); deleted shortly after the stream's event log is stored."""

    __tablename__ = "response_live_frame"

    response_id: Mapped[str] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"), primary_key=True)
    first_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_count: Mapped[int] = mapped_column(Integer)
    frames: Mapped[str] = mapped_column(Text)


class WebhookEndpoint(Base):
    """Where a tenant's webhooks go. The secret signs them (Standard Webhooks), so it is kept as is; the admin
    API shows it only in the answer that created the endpoint."""

    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written by a trigger on response (migration 8e2f6b0d4c51) in the
    transaction that stores a background response's outcome. `event_id` is the stable `webhook-id`."""

    __tablename__ = "webhook_delivery"

    pk: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    event_id: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    # Goes with its response, whoever deletes it (the tenant, the retention purge, an operator).
    response_id: Mapped[str] = mapped_column(ForeignKey("response.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # pending until delivered, or failed once WEBHOOK_RETRY_HOURS have passed without a 2xx.
    state: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A delivering process's claim on the row, so two processes never send it at once; void once past.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_webhook_delivery_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
        Index("ix_webhook_delivery_created_at", "created_at", "pk"),
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempt"

    pk: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    delivery_pk: Mapped[int] = mapped_column(ForeignKey("webhook_delivery.pk", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


__all__ = [
    "ApiKey",
    "Base",
    "ConsoleSessionEnd",
    "Conversation",
    "IdempotencyKey",
    "Item",
    "MaintenanceLease",
    "ResponseChain",
    "ResponseEventLog",
    "ResponseLiveFrame",
    "ResponseRecord",
    "RetentionPolicy",
    "RunningChainTurn",
    "ServiceProcess",
    "ServiceSecret",
    "Tenant",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


# Core handles on the tables, for repositories that build statements without ORM objects.
tenant_table = _table(Tenant)
api_key_table = _table(ApiKey)
conversation_table = _table(Conversation)
response_table = _table(ResponseRecord)
item_table = _table(Item)
deleted_item_position_table = _table(DeletedItemPosition)
response_event_log_table = _table(ResponseEventLog)
response_chain_table = _table(ResponseChain)
running_chain_turn_table = _table(RunningChainTurn)
idempotency_key_table = _table(IdempotencyKey)
retention_policy_table = _table(RetentionPolicy)
maintenance_lease_table = _table(MaintenanceLease)
console_session_end_table = _table(ConsoleSessionEnd)
service_process_table = _table(ServiceProcess)
service_secret_table = _table(ServiceSecret)
webhook_endpoint_table = _table(WebhookEndpoint)
webhook_delivery_table = _table(WebhookDelivery)
webhook_attempt_table = _table(WebhookAttempt)
