"""response.chain_pending: a turn not yet added to its chain's totals. Many clients branching from one response
finish together, and each finish updated the chain's one row, waiting for the others' commits in turn; a finish
that finds the row held now marks its response pending instead, and the next finish (or the heartbeat's sweep)
adds it.

Revision ID: a7e9c1d3f658
Revises: f6d8b0c2e547
Create Date: 2026-12-05 02:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7e9c1d3f658"
down_revision: str | None = "f6d8b0c2e547"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: added without rewriting the table. The index holds only the pending turns (none
    # on an existing table), built concurrently so that a large response table keeps taking turns meanwhile.
    op.add_column("response", sa.Column("chain_pending", sa.Boolean(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_response_chain_pending_thread_id",
            "response",
            ["thread_id"],
            postgresql_where=sa.text("chain_pending"),
            postgresql_concurrently=True,
        )


# A copy of the sweep as of this revision (service/threads/totals.py), waiting for every chain's row.
FOLD_PENDING_BEFORE_DOWNGRADE = """
    WITH folded AS (
        UPDATE response r SET chain_pending = NULL WHERE r.chain_pending
        RETURNING r.id, r.thread_id, r.status, r.completed_at, coalesce(r.upstream_model, r.model) AS model,
                  r.input_tokens, r.output_tokens, r.cost,
                  (SELECT count(*) FROM item i WHERE i.response_id = r.id AND (i.is_output OR r.id <> r.thread_id))
                  AS items
    ),
    f AS (
        SELECT thread_id, count(*) AS responses, sum(items) AS items, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, sum(cost) AS cost, max(completed_at) AS latest,
               (array_agg(status ORDER BY completed_at DESC))[1] AS status,
               (array_agg(model ORDER BY completed_at DESC))[1] AS model, array_agg(id) AS ids
        FROM folded GROUP BY thread_id
    )
    UPDATE response_chain SET
        updated_at = greatest(response_chain.updated_at, f.latest),
        turn_response_ids = ARRAY(SELECT t FROM unnest(response_chain.turn_response_ids) t WHERE t <> ALL(f.ids)),
        response_count = response_chain.response_count + f.responses,
        item_count = response_chain.item_count + f.items,
        input_tokens = response_chain.input_tokens + f.input_tokens,
        output_tokens = response_chain.output_tokens + f.output_tokens,
        cost = response_chain.cost + f.cost,
        last_status = CASE WHEN f.latest > response_chain.updated_at THEN f.status ELSE response_chain.last_status END,
        last_model = CASE WHEN f.latest > response_chain.updated_at THEN f.model ELSE response_chain.last_model END
    FROM f WHERE response_chain.id = f.thread_id
"""


def downgrade() -> None:
    # Pending turns are added to their chains' totals first: without the column, nothing would add them.
    op.execute(FOLD_PENDING_BEFORE_DOWNGRADE)
    with op.get_context().autocommit_block():
        op.drop_index("ix_response_chain_pending_thread_id", table_name="response", postgresql_concurrently=True)
    op.drop_column("response", "chain_pending")
