"""How a streamed response's event log is stored: packed (zlib streams, one after the other), a fraction of the
frames' size, and replayed exactly from any point; logs stored as text before stay readable, and a downgrade
turns packed logs back into text."""

from __future__ import annotations

import asyncio
import random
import string
import zlib

from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.migrate import alembic_config, downgrade, upgrade
from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.stream_support import read_events, stored_logs
from tests.test_thread_migration import _query, _run, scratch_url  # noqa: F401 - the fixture
from tests.turn_support import MODEL, rows

BEFORE_PACKED_LOGS = "a7d2e4c6b813"
_VOCABULARY = (
    "the model answers questions about databases streams replays and long conversations while the service keeps "
    "every item with its id status usage and cost so that clients never resend history"
)


def prose(words: int, seed: int = 7) -> str:
    pick, vocabulary = random.Random(seed).choice, _VOCABULARY.split()
    return " ".join(pick(vocabulary) for _ in range(words))


async def streamed(tenant: Tenant, fake: FakeOpenRouter, answer: str, chunks: int) -> tuple[str, list[dict]]:
    fake.enqueue(Reply(kind="sse", events=text_stream_events(answer, chunks=chunks)))
    body = {"model": MODEL, "input": "tell me everything", "stream": True}
    async with tenant.http.stream("POST", "/v1/responses", json=body) as answer_stream:
        events = await read_events(answer_stream)
    return events[0]["response"]["id"], events


async def replayed(tenant: Tenant, response_id: str, after: int) -> list[dict]:
    params = {"stream": "true", "starting_after": after}
    async with tenant.http.stream("GET", f"/v1/responses/{response_id}", params=params) as replay:
        assert replay.status_code == 200
        return await read_events(replay)


async def test_a_long_stream_is_stored_packed_and_replays_exactly_from_any_point(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """300 deltas of about 150 KB in all: the log spans many compressed blocks and many replay slices."""
    response_id, events = await streamed(alice, fake_upstream, prose(25_000), chunks=300)
    assert events[-1]["type"] == "response.completed"
    [row] = await rows(
        db,
        "SELECT events, octet_length(events_zlib) AS packed, event_count FROM response_event_log"
        " WHERE response_id = :r",
        r=response_id,
    )
    [log] = (await stored_logs(db, response_id)).values()
    assert row["events"] is None and row["event_count"] == len(events)
    assert row["packed"] * 4 < len(log), (row["packed"], len(log))
    for after in (-1, 0, 1, 15, 16, 17, 150, len(events) - 2, len(events) - 1, len(events) + 5):
        assert await replayed(alice, response_id, after) == events[max(after + 1, 0) :], after


async def test_a_log_stored_as_text_before_still_replays(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    response_id, events = await streamed(alice, fake_upstream, prose(2_000), chunks=40)
    [log] = (await stored_logs(db, response_id)).values()
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE response_event_log SET events = :log, events_zlib = NULL WHERE response_id = :r"),
            {"log": log, "r": response_id},
        )
    for after in (-1, 5, len(events) - 2):
        assert await replayed(alice, response_id, after) == events[after + 1 :]


async def test_a_downgrade_turns_packed_logs_back_into_text(scratch_url: str) -> None:  # noqa: F811
    await asyncio.to_thread(upgrade, scratch_url, "head")
    frames = [f'event: e\ndata: {{"n": {n}}}\n\n' for n in range(40)]
    # Two zlib streams, as a stream's kept blocks and then its last frames are stored.
    packed = zlib.compress("".join(frames[:16]).encode(), 1) + zlib.compress("".join(frames[16:]).encode(), 6)
    await _run(
        scratch_url,
        """
        INSERT INTO tenant (id, name) VALUES ('ten_t', 't');
        INSERT INTO response (id, tenant_id, status, model, thread_id, stream)
            VALUES ('r_packed', 'ten_t', 'completed', 'm', 'r_packed', true),
                   ('r_text', 'ten_t', 'completed', 'm', 'r_text', true);
        INSERT INTO response_event_log (response_id, events, event_count) VALUES ('r_text', 'as text', 1)
        """,
    )
    await _run(
        scratch_url,
        "INSERT INTO response_event_log (response_id, events_zlib, event_count) "
        f"VALUES ('r_packed', decode('{packed.hex()}', 'hex'), 40)",
    )
    # A long one: many streams, spanning many of the slices the downgrade reads (random text compresses poorly).
    rng = random.Random(7)
    long_frames = [
        f'event: e\ndata: {{"t": "{"".join(rng.choices(string.ascii_letters, k=1000))}"}}\n\n' for _ in range(400)
    ]
    blocks = [zlib.compress("".join(long_frames[i : i + 16]).encode(), 1) for i in range(0, 400, 16)]
    long_packed = b"".join(blocks)
    assert len(long_packed) > 4 * 65536
    await _run(
        scratch_url,
        "INSERT INTO response (id, tenant_id, status, model, thread_id, stream) "
        "VALUES ('r_long', 'ten_t', 'completed', 'm', 'r_long', true)",
    )
    await _run(
        scratch_url,
        "INSERT INTO response_event_log (response_id, events_zlib, event_count) "
        f"VALUES ('r_long', decode('{long_packed.hex()}', 'hex'), 400)",
    )
    await asyncio.to_thread(downgrade, scratch_url, BEFORE_PACKED_LOGS)
    logs = await _query(scratch_url, "SELECT response_id, events FROM response_event_log ORDER BY response_id")
    assert logs == [
        {"response_id": "r_long", "events": "".join(long_frames)},
        {"response_id": "r_packed", "events": "".join(frames)},
        {"response_id": "r_text", "events": "as text"},
    ]
    await asyncio.to_thread(upgrade, scratch_url, "head")
    await asyncio.to_thread(command.check, alembic_config(scratch_url))
