"""stream events and background state for responses

Revision ID: 1a7e3c5d9b01
Revises: 05382ee8d399
Create Date: 2026-11-25 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "1a7e3c5d9b01"
down_revision: str | None = "05382ee8d399"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
