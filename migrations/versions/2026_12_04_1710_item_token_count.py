"""item.token_count: what each stored item costs a model as input, written by the turn that stores it

Revision ID: c4d6e8f0a217
Revises: c3a5e7f9b124
Create Date: 2026-12-04 17:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4d6e8f0a217"
down_revision: str | None = "c3a5e7f9b124"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: PostgreSQL adds it without rewriting the item table, however large. Items stored
    # before it keep null: a turn that reads one estimates it then (service/context/ledger.py), as every turn
    # did before counts were stored; a backfill in SQL could only guess, and the tokenizer is not in SQL.
    op.add_column("item", sa.Column("token_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("item", "token_count")
