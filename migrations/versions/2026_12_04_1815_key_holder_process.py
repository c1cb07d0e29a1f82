"""idempotency_key.holder_process: the service process holding an in_progress key, so that the reaper frees it
as soon as it takes that process for dead, with its turns, instead of at the key's held_until.

Revision ID: e5c7a9b1d436
Revises: d4b6f8a0c325
Create Date: 2026-12-04 18:15:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5c7a9b1d436"
down_revision: str | None = "d4b6f8a0c325"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default, no index: added without rewriting the table, and no index to maintain per key.
    op.add_column("idempotency_key", sa.Column("holder_process", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_key", "holder_process")
