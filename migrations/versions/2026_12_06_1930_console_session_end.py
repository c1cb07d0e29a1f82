"""console_session_end: console sessions their operator signed out of, until the cookie's own expiry.

Signing out only cleared the browser's cookie; a copy of it (a shared machine, a proxy's log) opened the console
until CONSOLE_SESSION_HOURS had passed. A signed-out session's nonce is now kept here, and every page refuses it.

Downgrading drops the table: sessions signed out of open the console again until they expire.

Revision ID: a7d2e4c6b813
Revises: f3c9a1d7e5b2
Create Date: 2026-12-06 19:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7d2e4c6b813"
down_revision: str | None = "f3c9a1d7e5b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_session_end",
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_console_session_end")),
    )
    op.create_index(op.f("ix_console_session_end_expires_at"), "console_session_end", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_console_session_end_expires_at"), table_name="console_session_end")
    op.drop_table("console_session_end")
