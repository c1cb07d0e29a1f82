"""The bodies of /v1/models, /v1/responses/input_tokens and /v1/responses/compact, named as in OpenAI's
specification."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from service.responses.schemas import ResponseUsage
from service.schemas import ItemObject


class Model(msgspec.Struct):
    """OpenAI's Model; `context_length` and `max_completion_tokens` are OpenRouter's, for clients to plan with."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int | None = None
    max_completion_tokens: int | None = None


class ListModelsResponse(msgspec.Struct):
    object: Literal["list"]
    data: list[Model]


class TokenCountsBody(msgspec.Struct):
    model: str
    input: str | list[ItemObject]
    instructions: str | None = None
    conversation: str | dict[str, Any] | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None


class TokenCountsResource(msgspec.Struct):
    object: Literal["response.input_tokens"]
    input_tokens: int


class CompactResponseMethodPublicBody(msgspec.Struct):
    """OpenAI's body, plus `conversation` (ours): compact that conversation in place."""

    model: str
    input: str | list[ItemObject] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt_cache_key: str | None = None


class CompactResource(msgspec.Struct):
    id: str
    object: Literal["response.compaction"]
    created_at: int
    output: list[ItemObject]
    usage: ResponseUsage
