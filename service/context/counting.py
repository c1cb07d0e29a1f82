"""POST /v1/responses/input_tokens: what a turn would send, in tokens, without calling the model."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service.context import repository
from service.context.fitting import truncation_mode
from service.context.service import ContextWindows
from service.conversations import repository as conversations
from service.conversations.service import conversation_not_found, resolve_item_references
from service.errors import InvalidRequest
from service.items import normalize_input
from service.responses import repository as responses
from service.responses import turn_store
from service.responses.parameters import check_parameters
from service.responses.requests import (
    continuation_of,
    model_of,
    previous_history_gone,
    previous_not_found,
    previous_not_usable,
)
from service.responses.status import is_answered

# TokenCountsBody's fields that shape what a turn sends besides its input.
_REQUEST_FIELDS = ("instructions", "tools", "text", "reasoning", "truncation", "tool_choice", "parallel_tool_calls")


async def count_input_tokens(
    engine: AsyncEngine, context: ContextWindows, tenant_id: str, body: dict[str, Any], *, max_input_items: int
) -> dict[str, Any]:
    # Optional, as in OpenAI's TokenCountsBody: without it, the model the thread last answered with, else none
    # (then no context window applies, so nothing is truncated).
    model = model_of(body) if body.get("model") is not None else None
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string", param="instructions")
    params = {name: body[name] for name in _REQUEST_FIELDS if body.get(name) is not None}
    check_parameters(params)  # as POST /v1/responses checks them
    truncation_mode(params)
    conversation_id, previous = continuation_of(body)
    raw_input = body.get("input")
    items = [] if raw_input is None else normalize_input(raw_input, param="input", max_items=max_input_items)
    history, counts = "", None
    async with engine.connect() as conn:
        items = await resolve_item_references(conn, tenant_id, items, param="input")
        if conversation_id is not None:
            conversation = await conversations.get_conversation(conn, tenant_id, conversation_id)
            if conversation is None:
                raise conversation_not_found(conversation_id, param="conversation")
            model = model or conversation.last_model
            history, counts = await repository.conversation_history(conn, conversation_id)
        elif previous is not None:
            found = await responses.get_response(conn, tenant_id, previous)
            if found is None:
                raise previous_not_found(previous)
            if not is_answered(found.status):  # as a turn continuing it would be refused
                raise previous_not_usable(previous, found.status)
            model = model or found.model
            raw = await conn.get_raw_connection()
            try:
                history, chain_counts = await turn_store.chain_history(raw.driver_connection, tenant_id, previous)
            except turn_store.ConversationHistoryGone:
                raise previous_history_gone(previous) from None
            counts = list(chain_counts)
    count = await context.count(
        tenant_id,
        model,
        params,
        thread=conversation_id or previous,
        history=history,
        stored=counts,
        inputs=items,
        # As a turn refuses calls left unanswered; not without input (a thread measured while its calls run, which
        # no turn sends), nor with context_management, whose compaction first can take the call into its summary.
        check_calls=bool(items) and body.get("context_management") is None,
        compacting=body.get("context_management") is not None,
    )
    return {"object": "response.input_tokens", "input_tokens": count}
