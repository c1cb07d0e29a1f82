"""response_event_log.events_zlib: a streamed response's event log, zlib-compressed by the service.

A log was stored as text, several times the answer's size (every delta is a whole SSE frame, and the done events
repeat the text), and writing it held it whole in the statement's parameters: a long answer's finish took several
times the log's size in memory at once. The frames a stream keeps are compressed already (in blocks, by the
service); they are now stored so, as zlib streams one after the other, in a column PostgreSQL does not compress
again (STORAGE EXTERNAL). Logs written before stay as text in `events`; a row has one of the two.

Downgrading decompresses every log written since into `events` (one row at a time), then drops the column.

Revision ID: c4e8a2f6d917
Revises: a7d2e4c6b813
Create Date: 2026-12-07 08:00:00+00:00
"""

import zlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e8a2f6d917"
down_revision: str | None = "a7d2e4c6b813"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("response_event_log", sa.Column("events_zlib", sa.LargeBinary(), nullable=True))
    op.execute("ALTER TABLE response_event_log ALTER COLUMN events_zlib SET STORAGE EXTERNAL")
    op.alter_column("response_event_log", "events", existing_type=sa.Text(), nullable=True)
    op.create_check_constraint(
        op.f("ck_response_event_log_one_form"), "response_event_log", "(events IS NULL) <> (events_zlib IS NULL)"
    )


def _inflated(packed: bytes) -> str:
    """The log's text: its zlib streams, decompressed one after the other (as written at this revision). The
    input goes to zlib in slices: given the whole rest at each stream's start, zlib copied it into unused_data at
    each stream's end, which made reading a long log of many streams quadratic."""
    parts, view, position = [], memoryview(packed), 0
    stream, data = zlib.decompressobj(), b""
    while data or position < len(view):
        if not data:
            data = bytes(view[position : position + 65536])
            position += len(data)
        parts.append(stream.decompress(data))  # takes all of `data` unless its stream ends inside it
        data = b""
        if stream.eof:
            data, stream = stream.unused_data, zlib.decompressobj()
    return b"".join(parts).decode()


def downgrade() -> None:
    connection = op.get_bind()
    packed_ids = connection.execute(
        sa.text("SELECT response_id FROM response_event_log WHERE events_zlib IS NOT NULL")
    ).scalars()
    for response_id in list(packed_ids):
        packed = connection.execute(
            sa.text("SELECT events_zlib FROM response_event_log WHERE response_id = :r"), {"r": response_id}
        ).scalar_one()
        connection.execute(
            sa.text("UPDATE response_event_log SET events = :events, events_zlib = NULL WHERE response_id = :r"),
            {"events": _inflated(packed), "r": response_id},
        )
    op.drop_constraint(op.f("ck_response_event_log_one_form"), "response_event_log", type_="check")
    op.alter_column("response_event_log", "events", existing_type=sa.Text(), nullable=False)
    op.drop_column("response_event_log", "events_zlib")
