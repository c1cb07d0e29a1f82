"""response_chain.turn_response_ids, turn_expires_at: the plain turns running in a chain

A plain (neither streamed nor background) turn continuing a chain stores its response only when it ends. Its
begin now lists it on its chain's row, as a conversation turn's claim does on the conversation, so the admin
listing shows the chain in_progress while it runs; the finish removes it, and the reaper fails the chain's last
status when a listed turn's process stopped or its mark expired. No index: the mark is a HOT update.

Revision ID: c3a5e7f9b124
Revises: b2f4c6e8a013
Create Date: 2026-12-04 17:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "c3a5e7f9b124"
down_revision: str | None = "b2f4c6e8a013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds both without rewriting the table.
    op.add_column(
        "response_chain",
        sa.Column("turn_response_ids", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    )
    op.add_column("response_chain", sa.Column("turn_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("response_chain", "turn_expires_at")
    op.drop_column("response_chain", "turn_response_ids")
