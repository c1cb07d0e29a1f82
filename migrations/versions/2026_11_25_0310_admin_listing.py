"""admin listing: full-text search and listing indexes

Every admin list walks a (timestamp, id) keyset backwards, so each equality filter gets its own
(filter, timestamp, id) index and the page is the first rows of one index range, whatever the table size.

Full-text search uses the `simple` configuration, named as a constant: conversations come in every language
and are full of identifiers, error strings and names, which `english` would stem or drop as stop words (and
mangle for non-English text); `simple` only lowercases, so a search finds the word that was written. A constant
regconfig also makes the expression immutable (indexable) and independent of default_text_search_config.
The vector is a stored generated column (item.search_vector) with a GIN index: adding it rewrites `item`.

Revision ID: 2b8f4d6e0c12
Revises: 1a7e3c5d9b01
Create Date: 2026-11-25 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "2b8f4d6e0c12"
down_revision: str | None = "1a7e3c5d9b01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEYSET_INDEXES = (
    ("ix_conversation_updated_at_id", "conversation", ["updated_at", "id"]),
    ("ix_conversation_tenant_id_updated_at_id", "conversation", ["tenant_id", "updated_at", "id"]),
    ("ix_conversation_last_model_updated_at_id", "conversation", ["last_model", "updated_at", "id"]),
    ("ix_conversation_last_status_updated_at_id", "conversation", ["last_status", "updated_at", "id"]),
    ("ix_conversation_created_at_id", "conversation", ["created_at", "id"]),
    ("ix_response_created_at_id", "response", ["created_at", "id"]),
    ("ix_response_tenant_id_created_at_id", "response", ["tenant_id", "created_at", "id"]),
    ("ix_response_status_created_at_id", "response", ["status", "created_at", "id"]),
)


def upgrade() -> None:
    for name, table, columns in _KEYSET_INDEXES:
        op.create_index(name, table, columns, unique=False)
    # (tenant_id, created_at, id) serves everything (tenant_id, created_at) did.
    op.drop_index("ix_response_tenant_id_created_at", table_name="response")
    # The model that served the turn, else the one asked for: what conversation.last_model records.
    op.create_index(
        "ix_response_served_model_created_at_id",
        "response",
        [sa.text("coalesce(upstream_model, model)"), "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_conversation_metadata",
        "conversation",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    # Stored, not only indexed: a search for a common word walks recent conversations and checks their items,
    # and re-parsing every item's text there costs about 5x reading the stored vector (measured at 1M items).
    op.add_column(
        "item",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('simple'::regconfig, text_content)", persisted=True),
            nullable=True,
        ),
    )
    op.create_index("ix_item_search_vector", "item", ["search_vector"], unique=False, postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_item_search_vector", table_name="item")
    op.drop_column("item", "search_vector")
    op.drop_index("ix_conversation_metadata", table_name="conversation")
    op.drop_index("ix_response_served_model_created_at_id", table_name="response")
    op.create_index("ix_response_tenant_id_created_at", "response", ["tenant_id", "created_at"], unique=False)
    for name, table, _ in reversed(_KEYSET_INDEXES):
        op.drop_index(name, table_name=table)
