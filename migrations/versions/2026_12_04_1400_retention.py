"""retention policies and maintenance leases

Revision ID: 7d1e5a9c3b40
Revises: 3c9a5e7f1d23
Create Date: 2026-12-04 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7d1e5a9c3b40"
down_revision: str | None = "3c9a5e7f1d23"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retention_policy",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("responses_days", sa.Integer(), nullable=True),
        sa.Column("conversations_idle_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_retention_policy_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_retention_policy")),
    )
    op.create_table(
        "maintenance_lease",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_maintenance_lease")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_lease")
    op.drop_table("retention_policy")
