"""response.request_id: the X-Request-Id of the request that started the turn

Revision ID: 9a3c5e7b1d20
Revises: 4d1b6f8a2e34
Create Date: 2026-12-04 15:05:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a3c5e7b1d20"
down_revision: str | None = "4d1b6f8a2e34"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default, no index: PostgreSQL adds it without rewriting the table.
    op.add_column("response", sa.Column("request_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("response", "request_id")
