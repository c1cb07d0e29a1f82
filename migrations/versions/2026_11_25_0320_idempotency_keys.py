"""idempotency keys

Revision ID: 3c9a5e7f1d23
Revises: 2b8f4d6e0c12
Create Date: 2026-11-25 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "3c9a5e7f1d23"
down_revision: str | None = "2b8f4d6e0c12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
