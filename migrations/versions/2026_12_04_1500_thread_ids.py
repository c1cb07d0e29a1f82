"""threads: thread_id on every response and item, and the response_chain totals

A thread is a conversation or a chain of responses linked by previous_response_id outside any conversation.
Every response and item names its thread (the conversation's id, else its chain's first response's id), so the
admin side lists, searches and deletes threads of both kinds without walking a chain. A chain that continues a
conversation's response belongs to that conversation's thread (deleting the conversation deletes it too).
response_chain holds a chain's totals and last activity, as conversation's counters do for conversations.

Existing rows: responses get their thread by walking each chain from its start once (a response whose
conversation was deleted by its tenant starts its own chain); items get their response's thread, else their
conversation's.

Revision ID: 4d1b6f8a2e34
Revises: 8e2f6b0d4c51
Create Date: 2026-12-04 13:45:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "4d1b6f8a2e34"
down_revision: str | None = "8e2f6b0d4c51"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FILL_RESPONSES = """
    WITH RECURSIVE threads AS (
        SELECT id, coalesce(conversation_id, id) AS thread_id FROM response
        WHERE conversation_id IS NOT NULL OR previous_response_id IS NULL
        UNION ALL
        SELECT r.id, t.thread_id FROM response r JOIN threads t ON r.previous_response_id = t.id
        WHERE r.conversation_id IS NULL
    )
    UPDATE response SET thread_id = threads.thread_id FROM threads WHERE response.id = threads.id
"""
_FILL_ITEMS = """
    UPDATE item SET thread_id = coalesce(
        (SELECT r.thread_id FROM response r WHERE r.id = item.response_id), item.conversation_id
    )
"""

# Statistics for the chains' fill below, on a database that has rows. An empty table is left unanalyzed: ANALYZE
# would record it as known to be empty, and a statement planned against that (every item insert's foreign-key
# check of its response, planned once per connection) scans the table, for as long as nothing analyzes it again.
# A table never analyzed is assumed to hold a few pages, and such a lookup gets its index.
_ANALYZE_IF_FILLED = "DO $$ BEGIN IF EXISTS (SELECT FROM {table}) THEN ANALYZE {table}; END IF; END $$"

# One row per chain, from its responses: totals, first and last activity, the newest response's model and
# status, the first response's metadata and first user words. Grouped in one pass per table (hash joins), not
# per chain: at 600k responses a per-chain lookup ran minutes.
_FILL_CHAINS = """
    INSERT INTO response_chain (id, tenant_id, metadata, title, created_at, updated_at, item_count,
                                response_count, input_tokens, output_tokens, cost, last_model, last_status)
    SELECT root.id, root.tenant_id, root.metadata,
           (SELECT left(regexp_replace(btrim(i.text_content), '\\s+', ' ', 'g'), 80) FROM item i
            WHERE i.response_id = root.id AND NOT i.is_output AND i.type = 'message' AND i.role = 'user'
                  AND btrim(i.text_content) <> ''
            ORDER BY i.ordinal LIMIT 1),
           root.created_at, totals.updated_at, coalesce(items.count, 0),
           totals.responses, totals.input_tokens, totals.output_tokens, totals.cost,
           newest.model, newest.status
    FROM response root
    JOIN (
        SELECT thread_id, count(*) AS responses, sum(input_tokens) AS input_tokens,
               sum(output_tokens) AS output_tokens, sum(cost) AS cost,
               max(coalesce(completed_at, created_at)) AS updated_at
        FROM response WHERE conversation_id IS NULL GROUP BY thread_id
    ) totals ON totals.thread_id = root.id
    JOIN (
        SELECT DISTINCT ON (thread_id) thread_id, coalesce(upstream_model, model) AS model, status
        FROM response WHERE conversation_id IS NULL ORDER BY thread_id, created_at DESC, id DESC
    ) newest ON newest.thread_id = root.id
    LEFT JOIN (
        SELECT thread_id, count(*) AS count FROM item WHERE conversation_id IS NULL GROUP BY thread_id
    ) items ON items.thread_id = root.id
    WHERE root.thread_id = root.id AND root.conversation_id IS NULL
"""


def upgrade() -> None:
    op.add_column("response", sa.Column("thread_id", sa.Text(), nullable=True))
    op.add_column("item", sa.Column("thread_id", sa.Text(), nullable=True))
    op.execute(_FILL_RESPONSES)
    # A response left outside every chain (its parent's thread unknown): its own thread.
    op.execute("UPDATE response SET thread_id = id WHERE thread_id IS NULL")
    op.execute(_FILL_ITEMS)
    op.alter_column("response", "thread_id", nullable=False)
    op.alter_column("item", "thread_id", nullable=False)
    op.create_index("ix_response_thread_id_created_at_id", "response", ["thread_id", "created_at", "id"])
    op.create_index("ix_item_thread_id", "item", ["thread_id"])
    # Only running responses have an entry (a turn's begin adds one, its finish none), so a chain's current
    # status costs an index probe, not a read of the chain's responses.
    op.create_index(
        "ix_response_running_thread_id",
        "response",
        ["thread_id", "created_at"],
        postgresql_where=sa.text("status IN ('queued', 'in_progress')"),
    )
    op.create_table(
        "response_chain",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("item_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("response_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost", sa.Numeric(precision=20, scale=10), server_default=sa.text("0"), nullable=False),
        sa.Column("last_model", sa.Text(), nullable=True),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["id"], ["response.id"], name=op.f("fk_response_chain_id_response"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_response_chain_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_response_chain")),
    )
    for table in ("response", "item"):
        op.execute(_ANALYZE_IF_FILLED.format(table=table))
    op.execute(_FILL_CHAINS)
    for columns in (
        ["updated_at", "id"],
        ["tenant_id", "updated_at", "id"],
        ["last_model", "updated_at", "id"],
        ["last_status", "updated_at", "id"],
        ["created_at", "id"],
    ):
        op.create_index(f"ix_response_chain_{'_'.join(columns)}", "response_chain", columns)
    op.create_index(
        "ix_response_chain_metadata",
        "response_chain",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_table("response_chain")
    op.drop_index("ix_response_running_thread_id", table_name="response")
    op.drop_index("ix_item_thread_id", table_name="item")
    op.drop_index("ix_response_thread_id_created_at_id", table_name="response")
    op.drop_column("item", "thread_id")
    op.drop_column("response", "thread_id")
