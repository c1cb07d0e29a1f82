"""service secrets (the key that seals compaction items)

Revision ID: 4d1e2f3a5b67
Revises: 7d41c2a9e5b0
Create Date: 2026-12-04 14:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4d1e2f3a5b67"
down_revision: str | None = "7d41c2a9e5b0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_secret",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_secret")),
    )


def downgrade() -> None:
    op.drop_table("service_secret")
