"""Shared helpers for the turn-loop tests: the exact item shapes we expect to be stored and sent upstream,
and short ways to run a turn and read stored rows."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.rendering import client_item

MODEL = "openai/gpt-4o"


def user(text_: str) -> dict[str, Any]:
    """A user message as stored and replayed after the client sent it as a plain string."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text_}]}


def assistant(text_: str, msg_id: str) -> dict[str, Any]:
    """An assistant message exactly as the fake upstream's text_response returns it."""
    return {
        "type": "message",
        "id": msg_id,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text_, "annotations": []}],
    }


def shown(*items: dict[str, Any]) -> list[dict[str, Any]]:
    """Items as the API shows them (service/rendering.py completes `output_text` parts); stored items stay as
    they were received."""
    return [client_item(item) for item in items]


async def turn(client: httpx.AsyncClient, input_: Any, **fields: Any) -> dict[str, Any]:
    """POST /v1/responses that must succeed; returns the Response object."""
    answer = await client.post("/v1/responses", json={"model": MODEL, "input": input_, **fields})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def new_conversation(client: httpx.AsyncClient, **fields: Any) -> str:
    answer = await client.post("/v1/conversations", json=fields)
    assert answer.status_code == 200, answer.text
    conversation_id: str = answer.json()["id"]
    return conversation_id


async def rows(db: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def conversation_items(db: AsyncEngine, conversation_id: str) -> list[dict[str, Any]]:
    return await rows(
        db,
        "SELECT id, response_id, is_output, position, type, role, status, body FROM item "
        "WHERE conversation_id = :c ORDER BY position",
        c=conversation_id,
    )


async def list_all(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, in the order asked for."""
    answer = await client.get(path, params={"limit": 100, **params})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in {"id", "status"}} for item in items]
