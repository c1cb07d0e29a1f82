"""Replaying a keyed answer that is read from its response rather than kept as bytes:

- a streamed turn's answer is its event stream, replayed whole from the response's stored event log (or followed
  live while the turn still runs, here or in another process), whatever its first client received before it
  disconnected; so the key keeps no copy of the stream;
- the answer to a turn whose outcome the database could not take in time (503 `database_unavailable`) is that
  outcome once stored: the response, as the turn would have answered it. Until then the 503 is replayed.
"""

from __future__ import annotations

import msgspec
from litestar.types import Send
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cluster.bus import Bus
from service.errors import NotFound
from service.idempotency import service as idempotency
from service.responses.frame_log import inflated
from service.responses.resume import open_replay
from service.responses.runner import TurnRunner
from service.responses.service import get_response
from service.responses.status import RUNNING

_REPLAYED = (b"idempotent-replayed", b"true")
_PIECE_SIZE = 64 * 1024  # as a stored event log is sent (service/responses/resume.py)


def is_event_stream(headers: list[list[str]]) -> bool:
    return any(name.lower() == "content-type" and value.startswith("text/event-stream") for name, value in headers)


def _start(status: int, headers: list[list[str]]) -> dict[str, object]:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return {"type": "http.response.start", "status": status, "headers": [*raw, _REPLAYED]}


async def send_stored(send: Send, answer: idempotency.StoredAnswer) -> None:
    await send(_start(answer.status_code, answer.headers))  # type: ignore[arg-type]
    if answer.packed:  # a store=false stream's frames: sent as they are inflated, never whole in memory
        for piece in inflated(answer.body, _PIECE_SIZE):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


async def send_from_response(
    request: idempotency.KeyedRequest,
    answer: idempotency.StoredAnswer,
    send: Send,
    *,
    engine: AsyncEngine,
    runs: TurnRunner,
    bus: Bus,
) -> None:
    """`runs` and `bus`: a turn still running here or in another process is followed live, until it ends."""
    response_id = answer.answer_response_id
    assert response_id is not None
    if is_event_stream(answer.headers):
        # Raises NotFound (the error envelope) before anything is sent when the response was deleted since.
        frames = await open_replay(engine, runs, request.tenant_id, response_id, -1, bus=bus)
        await send(_start(answer.status_code, answer.headers))  # type: ignore[arg-type]
        async for chunk in frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    try:
        state = await get_response(engine, request.tenant_id, response_id)
    except NotFound:
        state = None  # not stored yet (a turn no client saw before its end is stored whole by its finish)
    if state is None or state.status in RUNNING:
        await send_stored(send, answer)
        return
    body = msgspec.json.encode(state.render())
    await idempotency.settle_deferred_answer(engine, request, response_id, 200, body)
    await send_stored(send, idempotency.StoredAnswer(200, [["content-type", "application/json"]], body))
