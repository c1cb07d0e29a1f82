"""response.pending_chain_id replaces response.chain_pending: the chain whose totals do not yet count the turn.
The pending turns were found by `thread_id = $chain AND chain_pending`, which three indexes on thread_id can
answer; on tables a connection first planned while empty, the finish's fold kept a sequential scan of
`response`. Only the partial index of pending turns holds pending_chain_id, so equality on it is one plan at
every table size. Stop the processes of the revision before first: their finishes of chain turns write
chain_pending, which this drops.

Revision ID: b8f2d4e6a931
Revises: a7e9c1d3f658
Create Date: 2026-12-05 06:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b8f2d4e6a931"
down_revision: str | None = "a7e9c1d3f658"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table. The pending turns (none, or a few while a chain's
    # finishes come together) carry over through the old partial index; both indexes are built and dropped
    # concurrently so that a large response table keeps taking turns meanwhile.
    op.add_column("response", sa.Column("pending_chain_id", sa.Text(), nullable=True))
    op.execute("UPDATE response SET pending_chain_id = thread_id WHERE chain_pending")
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_response_pending_chain_id",
            "response",
            ["pending_chain_id"],
            postgresql_where=sa.text("pending_chain_id IS NOT NULL"),
            postgresql_concurrently=True,
        )
        op.drop_index("ix_response_chain_pending_thread_id", table_name="response", postgresql_concurrently=True)
    op.drop_column("response", "chain_pending")


def downgrade() -> None:
    op.add_column("response", sa.Column("chain_pending", sa.Boolean(), nullable=True))
    op.execute("UPDATE response SET chain_pending = true WHERE pending_chain_id IS NOT NULL")
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_response_chain_pending_thread_id",
            "response",
            ["thread_id"],
            postgresql_where=sa.text("chain_pending"),
            postgresql_concurrently=True,
        )
        op.drop_index("ix_response_pending_chain_id", table_name="response", postgresql_concurrently=True)
    op.drop_column("response", "pending_chain_id")
