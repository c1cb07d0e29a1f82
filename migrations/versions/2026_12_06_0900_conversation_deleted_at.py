"""conversation.deleted_at: a conversation its tenant deleted, kept hidden while its responses need its items.

OpenAI keeps a deleted conversation's items ("Items in the conversation will not be deleted") and its responses
can still be continued with `previous_response_id`, the model seeing what preceded them in the conversation. The
delete used to remove the row, which set the responses' conversation_id to null and detached their items: a
chain continuing one of them afterwards sent the model only the chain's own items. A conversation that still has
responses is now only marked: every API treats it as deleted (service/db/visibility.py), the items before its
last response stay as that history, and the row goes with its last response (service/conversations/repository.py).
The partial index holds only marked rows: the retention run finds those left without a response without reading
the table.

Downgrading deletes the marked conversations as the earlier revision's delete did: the items responses carried
are left to them, the others go, and the responses lose their conversation (and so that history).

Revision ID: e2b6c8d41f37
Revises: d91b3f5a7c20
Create Date: 2026-12-06 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e2b6c8d41f37"
down_revision: str | None = "d91b3f5a7c20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table; the index is empty and built concurrently.
    op.add_column("conversation", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_conversation_deleted_at",
            "conversation",
            ["deleted_at"],
            postgresql_where=sa.text("deleted_at IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_conversation_deleted_at", table_name="conversation", postgresql_concurrently=True)
    op.execute(
        """
        UPDATE item SET conversation_id = NULL, position = NULL
        WHERE response_id IS NOT NULL
          AND conversation_id IN (SELECT id FROM conversation WHERE deleted_at IS NOT NULL)
        """
    )
    op.execute("DELETE FROM conversation WHERE deleted_at IS NOT NULL")
    op.drop_column("conversation", "deleted_at")
