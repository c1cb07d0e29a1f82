"""conversation.purging_since: the retention purge's durable mark on a conversation it has started to delete.

The purge removes a conversation's items over several short transactions. Before this column it held the
conversation with a turn's claim, which expires: a process that died between batches left the conversation
readable, with holes, and open to new turns. From the mark on, every API treats the conversation as deleted,
and the next purge run finishes it whatever the tenant's policy has become. The partial index holds only
marked rows, so the run finds them without reading the table.

Downgrading drops the mark: a conversation still marked then reads as it was before this revision (what the
purge had not yet deleted), until a purge of that revision claims it again.

Revision ID: c4a7e2f9d015
Revises: b8f2d4e6a931
Create Date: 2026-12-05 23:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4a7e2f9d015"
down_revision: str | None = "b8f2d4e6a931"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table; the index is empty and built concurrently.
    op.add_column("conversation", sa.Column("purging_since", sa.DateTime(timezone=True), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_conversation_purging_since",
            "conversation",
            ["purging_since"],
            postgresql_where=sa.text("purging_since IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_conversation_purging_since", table_name="conversation", postgresql_concurrently=True)
    op.drop_column("conversation", "purging_since")
