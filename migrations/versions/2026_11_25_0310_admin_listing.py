"""admin listing: full-text search and listing indexes

Revision ID: 2b8f4d6e0c12
Revises: 1a7e3c5d9b01
Create Date: 2026-11-25 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "2b8f4d6e0c12"
down_revision: str | None = "1a7e3c5d9b01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
