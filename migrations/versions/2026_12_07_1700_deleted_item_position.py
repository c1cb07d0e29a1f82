"""deleted_item_position: where an item deleted through the items API stood in its conversation.

A page of a conversation's items continues after the item its `after` names; once that item was deleted, its
position was gone and the page a 400. The SDK's auto-pagination names the last item of the page it has just
been given, so a client deleting the items as it went through them stopped at the end of its first page. The
position is now kept, and a cursor naming a deleted item goes on from there.

Downgrading drops the table: a cursor naming a deleted item is refused again.

Revision ID: d5f1b7e3a920
Revises: c4e8a2f6d917
Create Date: 2026-12-07 17:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d5f1b7e3a920"
down_revision: str | None = "c4e8a2f6d917"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deleted_item_position",
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name=op.f("fk_deleted_item_position_conversation_id_conversation"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "item_id", name=op.f("pk_deleted_item_position")),
    )


def downgrade() -> None:
    op.drop_table("deleted_item_position")
