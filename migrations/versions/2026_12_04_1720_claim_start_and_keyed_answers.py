"""claims and keys that every process reads alike: a claim's start, a key's own deadline, answers read from
the response, and a process's liveness lock

- conversation.turn_claimed_at: when the turn claim was taken, so that processes with different TURN_LOCK_TTL
  settings agree on a claim's age (its expiry is the holder's TTL, not the reader's);
- idempotency_key.held_until: until when the request holding the key may still be running (its own process's
  TURN_LOCK_TTL), after which the key may be taken over;
- idempotency_key.answer_response_id: the response whose stored state is the answer (a stream's event log, or an
  outcome the database could not take in time). No foreign key: such a response may be stored after the key;
- service_process.liveness_key: the advisory lock the process holds on its listening connection while it lives;
- service_process.turn_lock_ttl: the process's TURN_LOCK_TTL, so the reaper's backstop waits for the longest.

Revision ID: d4b6f8a0c325
Revises: c4d6e8f0a217
Create Date: 2026-12-04 17:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4b6f8a0c325"
down_revision: str | None = "c4d6e8f0a217"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default, no index: PostgreSQL adds each without rewriting its table.
    op.add_column("conversation", sa.Column("turn_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("idempotency_key", sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("idempotency_key", sa.Column("answer_response_id", sa.Text(), nullable=True))
    op.add_column("service_process", sa.Column("liveness_key", sa.BigInteger(), nullable=True))
    op.add_column("service_process", sa.Column("turn_lock_ttl", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("service_process", "turn_lock_ttl")
    op.drop_column("service_process", "liveness_key")
    op.drop_column("idempotency_key", "answer_response_id")
    op.drop_column("idempotency_key", "held_until")
    op.drop_column("conversation", "turn_claimed_at")
