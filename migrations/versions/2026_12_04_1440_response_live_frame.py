"""live frames of streams followed from another process

Revision ID: 4f8c1d3e5a62
Revises: 4d1e2f3a5b67
Create Date: 2026-12-04 14:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4f8c1d3e5a62"
down_revision: str | None = "4d1e2f3a5b67"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "response_live_frame",
        sa.Column("response_id", sa.Text(), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("frame_count", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["response_id"],
            ["response.id"],
            name=op.f("fk_response_live_frame_response_id_response"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("response_id", "first_seq", name=op.f("pk_response_live_frame")),
    )


def downgrade() -> None:
    op.drop_table("response_live_frame")
