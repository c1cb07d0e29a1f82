"""Helpers for the streaming and background tests: reading raw SSE, waiting for a response to end, stored rows."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.turn_support import rows

TERMINAL_TYPES = {"response.completed", "response.incomplete", "response.failed"}
RUNNING = {"queued", "in_progress"}

# The canonical sequence for a one-message text answer with four deltas.
CANONICAL_TEXT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def parse_sse(raw: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event line, data) per event; comments skipped."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    for block in raw.split("\n\n"):
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
        if data is not None:
            events.append((name, data))
    return events


async def read_events(response: httpx.Response, limit: int | None = None) -> list[dict[str, Any]]:
    """Read an open SSE response event by event (stopping after `limit`), checking the `event:` lines."""
    events: list[dict[str, Any]] = []
    name: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
            assert data["type"] == name, (name, data["type"])
            events.append(data)
            if limit is not None and len(events) >= limit:
                break
    return events


def assert_well_formed(events: list[dict[str, Any]], *, first: int = 0) -> None:
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(first, first + len(events))), numbers
    terminals = [e for e in events if e["type"] in TERMINAL_TYPES]
    assert len(terminals) == 1 and events[-1] is terminals[0], [e["type"] for e in events]


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


async def wait_until_ended(client: httpx.AsyncClient, response_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await client.get(f"/v1/responses/{response_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] not in RUNNING:
            return body
        assert asyncio.get_running_loop().time() < deadline, f"{response_id} still {body['status']}"
        await asyncio.sleep(0.05)


async def conversation_state(db: AsyncEngine, conversation_id: str) -> dict[str, Any]:
    [conversation] = await rows(
        db, "SELECT item_count, turn_response_id FROM conversation WHERE id = :c", c=conversation_id
    )
    positioned = await rows(db, "SELECT body FROM item WHERE conversation_id = :c ORDER BY position", c=conversation_id)
    return {**conversation, "items": [json.loads(r["body"]) for r in positioned]}


async def stored_outputs(db: AsyncEngine, response_id: str) -> list[dict[str, Any]]:
    found = await rows(
        db,
        "SELECT status, body FROM item WHERE response_id = :r AND is_output ORDER BY ordinal",
        r=response_id,
    )
    return [{"row_status": r["status"], **json.loads(r["body"])} for r in found]


def unpacked(packed: bytes) -> str:
    """A packed event log's text: its zlib streams, one after the other (read here without the service's code)."""
    parts, rest = [], packed
    while rest:
        stream = zlib.decompressobj()
        parts.append(stream.decompress(rest) + stream.flush())
        assert stream.eof, "the log ends inside a zlib stream"
        rest = stream.unused_data
    return b"".join(parts).decode()


async def stored_logs(db: AsyncEngine, response_id: str | None = None) -> dict[str, str]:
    """The stored event logs' texts by response id (of one response, or all), however each was stored."""
    found = await rows(
        db,
        "SELECT response_id, events, events_zlib FROM response_event_log"
        " WHERE CAST(:r AS text) IS NULL OR response_id = :r",
        r=response_id,
    )
    return {r["response_id"]: r["events"] if r["events"] is not None else unpacked(r["events_zlib"]) for r in found}


async def final_response(client: httpx.AsyncClient, body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    """A turn's Response once it ended: its answer, or (`stream`) its stream's terminal event's; the turn must
    answer 200."""
    if not stream:
        answer = await client.post("/v1/responses", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())
    async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer:
        assert answer.status_code == 200, await answer.aread()
        events = await read_events(answer)
    assert_well_formed(events)
    return dict(events[-1]["response"])
