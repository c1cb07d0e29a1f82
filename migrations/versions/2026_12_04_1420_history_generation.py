"""tenant.history_generation, moved on whenever an item leaves a history

A worker caches response chains' histories (service/responses/chain_cache.py). An item's text never changes, so
a chain's history changes only when an item leaves it: deleted (a conversation item, a conversation, a
response, a thread, cascades included), or taken out of its conversation (a conversation item a response
carried, removed from the conversation or with it: it no longer precedes a chain begun later in that
conversation). Triggers move the tenant's generation on whatever path did it: once per deleting statement, and
once per item taken out of a conversation (a turn's own updates put items into a conversation, never take them
out, so they never fire it). A cached history is used only while the generation it was built at is current.

Revision ID: 7d41c2a9e5b0
Revises: 9e4b2c6d8a17
Create Date: 2026-12-04 14:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d41c2a9e5b0"
down_revision: str | None = "9e4b2c6d8a17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenant", sa.Column("history_generation", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.execute(
        """
        CREATE FUNCTION item_deleted_move_history_generation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE tenant SET history_generation = history_generation + 1
            WHERE id IN (SELECT DISTINCT tenant_id FROM deleted_items);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER item_deleted_move_history_generation AFTER DELETE ON item
        REFERENCING OLD TABLE AS deleted_items FOR EACH STATEMENT
        EXECUTE FUNCTION item_deleted_move_history_generation()
        """
    )
    op.execute(
        """
        CREATE FUNCTION item_detached_move_history_generation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE tenant SET history_generation = history_generation + 1 WHERE id = NEW.tenant_id;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER item_detached_move_history_generation AFTER UPDATE OF conversation_id ON item
        FOR EACH ROW WHEN (OLD.conversation_id IS NOT NULL AND NEW.conversation_id IS NULL)
        EXECUTE FUNCTION item_detached_move_history_generation()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER item_detached_move_history_generation ON item")
    op.execute("DROP FUNCTION item_detached_move_history_generation()")
    op.execute("DROP TRIGGER item_deleted_move_history_generation ON item")
    op.execute("DROP FUNCTION item_deleted_move_history_generation()")
    op.drop_column("tenant", "history_generation")
