"""webhook endpoints and their delivery outbox

Revision ID: 8e2f6b0d4c51
Revises: 4f8c1d3e5a62
Create Date: 2026-12-04 14:30:00+00:00

A background response's outcome (completed, failed, cancelled, incomplete) enqueues one delivery per subscribed
endpoint of its tenant from a trigger, so the outbox row commits in the very transaction that stores the outcome,
whichever code path stores it (the turn's finish, a cancel, the reaper, shutdown). The WHEN clauses keep every
other response write (and every non-background turn) from calling the function at all.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "8e2f6b0d4c51"
down_revision: str | None = "4f8c1d3e5a62"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOMES = "('completed', 'failed', 'cancelled', 'incomplete')"

ENQUEUE = """
CREATE FUNCTION webhook_enqueue_response_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text := 'response.' || NEW.status;
BEGIN
    INSERT INTO webhook_delivery (event_id, endpoint_id, tenant_id, event_type, response_id, next_attempt_at)
    SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), e.id, NEW.tenant_id, kind, NEW.id, now()
    FROM webhook_endpoint e
    WHERE e.tenant_id = NEW.tenant_id AND kind = ANY (e.events);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_webhook_endpoint_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoint")),
    )
    op.create_index(op.f("ix_webhook_endpoint_tenant_id"), "webhook_endpoint", ["tenant_id"], unique=False)
    op.create_table(
        "webhook_delivery",
        sa.Column("pk", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("endpoint_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("response_id", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoint.id"],
            name=op.f("fk_webhook_delivery_endpoint_id_webhook_endpoint"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index("ix_webhook_delivery_created_at", "webhook_delivery", ["created_at", "pk"], unique=False)
    op.create_table(
        "webhook_attempt",
        sa.Column("pk", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("delivery_pk", sa.BigInteger(), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_pk"],
            ["webhook_delivery.pk"],
            name=op.f("fk_webhook_attempt_delivery_pk_webhook_delivery"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_webhook_attempt")),
    )
    op.create_index(op.f("ix_webhook_attempt_delivery_pk"), "webhook_attempt", ["delivery_pk"], unique=False)
    op.execute(ENQUEUE)
    op.execute(
        "CREATE TRIGGER response_outcome_webhook_insert AFTER INSERT ON response FOR EACH ROW "
        f"WHEN (NEW.background AND NEW.status IN {OUTCOMES}) "
        "EXECUTE FUNCTION webhook_enqueue_response_outcome()"
    )
    op.execute(
        "CREATE TRIGGER response_outcome_webhook_update AFTER UPDATE OF status ON response FOR EACH ROW "
        f"WHEN (NEW.background AND NEW.status IN {OUTCOMES} AND OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION webhook_enqueue_response_outcome()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER response_outcome_webhook_update ON response")
    op.execute("DROP TRIGGER response_outcome_webhook_insert ON response")
    op.execute("DROP FUNCTION webhook_enqueue_response_outcome()")
    op.drop_index(op.f("ix_webhook_attempt_delivery_pk"), table_name="webhook_attempt")
    op.drop_table("webhook_attempt")
    op.drop_index("ix_webhook_delivery_created_at", table_name="webhook_delivery")
    op.drop_index(
        "ix_webhook_delivery_due", table_name="webhook_delivery", postgresql_where=sa.text("state = 'pending'")
    )
    op.drop_table("webhook_delivery")
    op.drop_index(op.f("ix_webhook_endpoint_tenant_id"), table_name="webhook_endpoint")
    op.drop_table("webhook_endpoint")
