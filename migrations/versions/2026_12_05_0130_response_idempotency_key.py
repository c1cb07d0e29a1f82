"""response.idempotency_key: the Idempotency-Key of the request that started the turn. A process killed after
storing a turn and before completing its key left the key in_progress; the reaper then freed it and a retry ran
the turn a second time (its input appended twice). The key is now completed from the answered turn instead.

Revision ID: f6d8b0c2e547
Revises: e5c7a9b1d436
Create Date: 2026-12-05 01:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f6d8b0c2e547"
down_revision: str | None = "e5c7a9b1d436"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table. The index is partial, so unkeyed turns add no
    # entry; it is read only when a key's holder died. Built concurrently outside the transaction, so that a
    # large response table keeps taking turns while it builds.
    op.add_column("response", sa.Column("idempotency_key", sa.Text(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_response_idempotency_key",
            "response",
            ["tenant_id", "idempotency_key"],
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_response_idempotency_key", table_name="response", postgresql_concurrently=True)
    op.drop_column("response", "idempotency_key")
