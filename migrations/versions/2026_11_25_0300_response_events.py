"""stream events and background state for responses

A streamed response's events are kept as one text (the SSE frames as sent), written once when the stream ends:
no per-event writes while streaming, and `starting_after` resumes replay them byte for byte. The log is content,
so it goes with its response (ON DELETE CASCADE). Background state needs no new column: `response.background`
and `response.status` (queued/in_progress/.../cancelled) already hold it.

Revision ID: 1a7e3c5d9b01
Revises: 05382ee8d399
Create Date: 2026-11-25 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1a7e3c5d9b01"
down_revision: str | None = "05382ee8d399"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "response_event_log",
        sa.Column("response_id", sa.Text(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["response_id"],
            ["response.id"],
            name=op.f("fk_response_event_log_response_id_response"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("response_id", name=op.f("pk_response_event_log")),
    )


def downgrade() -> None:
    op.drop_table("response_event_log")
