"""webhook_delivery.response_id references response ON DELETE CASCADE: a response's deliveries go with it.

They only named the response, so they outlived every delete but the admin's hard delete: a tenant's delete and
the retention purge left them (still `pending` ones were then sent, for a response that answers 404), and the
delivery log grew for good. Deliveries whose response is already gone are deleted first. The index serves the
cascade; the constraint is added NOT VALID and validated afterwards, so the table is not locked while it is read.

Downgrading drops the constraint and the index; the deliveries deleted stay deleted.

Revision ID: f3c9a1d7e5b2
Revises: e2b6c8d41f37
Create Date: 2026-12-06 19:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f3c9a1d7e5b2"
down_revision: str | None = "e2b6c8d41f37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "fk_webhook_delivery_response_id_response"
INDEX = "ix_webhook_delivery_response_id"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(INDEX, "webhook_delivery", ["response_id"], postgresql_concurrently=True)
    op.execute("DELETE FROM webhook_delivery d WHERE NOT EXISTS (SELECT 1 FROM response r WHERE r.id = d.response_id)")
    op.execute(
        f"ALTER TABLE webhook_delivery ADD CONSTRAINT {CONSTRAINT} FOREIGN KEY (response_id) "
        "REFERENCES response (id) ON DELETE CASCADE NOT VALID"
    )
    op.execute(f"ALTER TABLE webhook_delivery VALIDATE CONSTRAINT {CONSTRAINT}")


def downgrade() -> None:
    op.drop_constraint(CONSTRAINT, "webhook_delivery", type_="foreignkey")
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="webhook_delivery", postgresql_concurrently=True)
