"""running_chain_turn: the plain turns continuing a previous response, while they run.

Such a turn stores nothing before its end, so a delete of the response it continued (a tenant's DELETE, the
retention purge, an admin's hard delete of the thread) could not see it: the response went, and the turn's
finish stored a response detached from its history (its own thread, previous_response_id null, though its
answer named the parent). The turn's begin now writes a row here and its finish removes it; the deletes read
it as they read stored children.

Unlogged: the rows mean nothing after a crash, when every turn in flight fails. Downgrading drops the table,
which the earlier revision's code does not use.

Revision ID: d91b3f5a7c20
Revises: c4a7e2f9d015
Create Date: 2026-12-06 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d91b3f5a7c20"
down_revision: str | None = "c4a7e2f9d015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "running_chain_turn",
        sa.Column("response_id", sa.Text(), nullable=False),
        sa.Column("previous_response_id", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("response_id", name=op.f("pk_running_chain_turn")),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("running_chain_turn")
