"""POST /v1/responses/compact: OpenAI's compaction of a thread, made by the service (service/context/compaction.py).

Without `conversation` it answers the compacted window (the user messages kept, then one compaction item, then
the calls still waiting for their output, which the client answers in its next input) and stores nothing. With
`conversation` (our extension) it compacts that conversation in place, as a turn does: the conversation is claimed
while it runs (a turn or another compaction meanwhile gets 409), and the request's input and the compaction item
are appended together; a failure stores the attempt as a failed response and leaves the conversation as it was.
The full history always stays stored and listed.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec

from service.errors import InvalidRequest, ServiceError
from service.ids import new_id
from service.items import normalize_input
from service.rendering import client_item
from service.responses.outcome import apply_upstream_result
from service.responses.parameters import check_parameters
from service.responses.requests import TurnRequest, continuation_of, model_of
from service.responses.status import Status
from service.responses.turn import INTERRUPTED_ERROR, TurnContext
from service.responses.views import full_usage


def _kept_message(body: str) -> dict[str, Any]:
    """A kept user message as OpenAI's compacted output shows it, with an id and a status. A history holds a user
    message's JSON without the id it is stored under, so one the client did not name gets a new one: the
    compacted window is a new list of items, which the client sends as its next input. Its parts are completed
    as everywhere else an item is shown (an image's `detail`)."""
    message: dict[str, Any] = client_item(msgspec.json.decode(body))
    return {"id": new_id("msg"), **message, "status": message.get("status") or "completed"}


# CompactResponseMethodPublicBody's fields that go on to the summary call, which OpenRouter takes as a turn's.
_FORWARDED = ("prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier")
# The compact body's bound (a turn's prompt_cache_key has none).
_MAX_PROMPT_CACHE_KEY_CHARS = 64


def _forwarded_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """The compact body's parameters for the summary call, checked as a turn's are."""
    params = {name: body[name] for name in _FORWARDED if body.get(name) is not None}
    check_parameters(params)
    if len(params.get("prompt_cache_key", "")) > _MAX_PROMPT_CACHE_KEY_CHARS:
        raise InvalidRequest(
            f"prompt_cache_key must be at most {_MAX_PROMPT_CACHE_KEY_CHARS} characters",
            param="prompt_cache_key",
            code="invalid_value",
        )
    return params


def _compact_request(body: dict[str, Any], max_input_items: int) -> TurnRequest:
    model = model_of(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string", param="instructions")
    forwarded = _forwarded_parameters(body)
    conversation_id, previous = continuation_of(body)
    raw_input = body.get("input")
    items = [] if raw_input is None else normalize_input(raw_input, param="input", max_items=max_input_items)
    if not items and conversation_id is None and previous is None:
        raise InvalidRequest("Nothing to compact: give input, previous_response_id or conversation", param="input")
    return TurnRequest(
        model=model,
        input_items=items,
        params={"model": model, **({"instructions": instructions} if instructions is not None else {}), **forwarded},
        instructions=instructions,
        conversation_id=conversation_id,
        previous_response_id=previous,
        store=conversation_id is not None,
        stream=False,
        background=False,
        metadata={},
    )


async def compact_thread(
    turns: TurnContext, tenant_id: str, body: dict[str, Any], *, max_input_items: int
) -> dict[str, Any]:
    request = _compact_request(body, max_input_items)
    windows = turns.windows
    await windows.check_input(tenant_id, request.input_items)
    turn = await turns.begin(tenant_id, request)
    history, turn.history = turn.history, ""
    try:
        item, kept, pending, usage = await windows.compact(
            turns.upstream,
            tenant_id,
            request.model,
            thread=request.conversation_id or request.previous_response_id,
            history=history,
            inputs=[i.body for i in turn.request.input_items],
            forwarded={name: request.params[name] for name in _FORWARDED if name in request.params},
        )
    except ServiceError as error:
        code = "invalid_prompt" if error.status_code in {400, 413, 422} else "server_error"
        await asyncio.shield(turns.fail(turn, {"code": code, "message": error.message}))
        raise
    except BaseException:
        await asyncio.shield(turns.fail(turn, INTERRUPTED_ERROR))
        raise
    if request.store:
        result = {"status": Status.COMPLETED, "model": request.model, "output": [item], "usage": usage}
        outputs = apply_upstream_result(turn.state, result)
        await asyncio.shield(turns.finish(turn, outputs))
    created_at = turn.state.created_at
    return {
        "id": turn.state.id,
        "object": "response.compaction",
        "created_at": int(created_at.timestamp()) if isinstance(created_at, datetime) else 0,
        "output": [
            *(_kept_message(body) for body in kept),
            item,
            *(client_item(msgspec.json.decode(b)) for b in pending),
        ],
        "usage": full_usage(usage),  # OpenAI's ResponseUsage: both detail objects, zeros when none came
    }
