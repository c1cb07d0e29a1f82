"""response.service_tier: the service tier the upstream reported serving the turn with

Revision ID: b2f4c6e8a013
Revises: 9a3c5e7b1d20
Create Date: 2026-12-04 15:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b2f4c6e8a013"
down_revision: str | None = "9a3c5e7b1d20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default, no index: PostgreSQL adds it without rewriting the table.
    op.add_column("response", sa.Column("service_tier", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("response", "service_tier")
