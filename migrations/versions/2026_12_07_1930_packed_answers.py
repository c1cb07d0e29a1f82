"""Packed answers: idempotency_key.body_zlib, a keyed store=false stream's answer packed as a stored event log
is; and service_process.code_revision, so that a rolling upgrade packs none while an older process lives.

Such a stream is stored nowhere else, so its key kept every frame as sent: as large as the stream, several times
the answer's text (every delta is a whole SSE frame, and the done events repeat the text), and read whole into
memory to be replayed. Its frames are kept compressed while the stream runs (service/responses/frame_log.py);
the key now stores them so, in a column PostgreSQL does not compress again (STORAGE EXTERNAL). Answers stored
before stay in `body`; a row has at most one of the two.

service_process.code_revision: the migration head each process's code was written for. A process of an earlier
release (its row has none) replays `body` only, and would send a packed answer as a stream without an event: while
one is alive, during a rolling upgrade, the newer processes store such answers as sent.

Downgrading decompresses every packed answer into `body` (one row at a time), then drops the columns.

Revision ID: e6a3c9d1f402
Revises: d5f1b7e3a920
Create Date: 2026-12-07 19:30:00+00:00
"""

import zlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e6a3c9d1f402"
down_revision: str | None = "d5f1b7e3a920"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_key", sa.Column("body_zlib", sa.LargeBinary(), nullable=True))
    op.execute("ALTER TABLE idempotency_key ALTER COLUMN body_zlib SET STORAGE EXTERNAL")
    op.add_column("service_process", sa.Column("code_revision", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_idempotency_key_one_form"), "idempotency_key", "body IS NULL OR body_zlib IS NULL"
    )


def _inflated(packed: bytes) -> bytes:
    """Zlib streams one after the other (as written at this revision), decompressed. The input goes to zlib in
    slices, as the event log's downgrade does (c4e8a2f6d917): given the whole rest at each stream's start, zlib
    copies it into unused_data at each stream's end, and a long stream's answer is thousands of streams."""
    parts, view, position = [], memoryview(packed), 0
    stream, data = zlib.decompressobj(), b""
    while data or position < len(view):
        if not data:
            data = bytes(view[position : position + 65536])
            position += len(data)
        parts.append(stream.decompress(data))
        data = b""
        if stream.eof:
            data, stream = stream.unused_data, zlib.decompressobj()
    return b"".join(parts)


def downgrade() -> None:
    connection = op.get_bind()
    packed_keys = connection.execute(
        sa.text("SELECT tenant_id, key FROM idempotency_key WHERE body_zlib IS NOT NULL")
    ).all()
    for tenant_id, key in packed_keys:
        packed = connection.execute(
            sa.text("SELECT body_zlib FROM idempotency_key WHERE tenant_id = :t AND key = :k"),
            {"t": tenant_id, "k": key},
        ).scalar_one()
        connection.execute(
            sa.text("UPDATE idempotency_key SET body = :body, body_zlib = NULL WHERE tenant_id = :t AND key = :k"),
            {"body": _inflated(packed), "t": tenant_id, "k": key},
        )
    op.drop_constraint(op.f("ck_idempotency_key_one_form"), "idempotency_key", type_="check")
    op.drop_column("idempotency_key", "body_zlib")
    op.drop_column("service_process", "code_revision")
