"""The bodies and stream events of /v1/responses, named as in OpenAI's specification. Items stay open objects:
they are stored and replayed exactly as received."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.schemas import ItemObject, Metadata

# service.responses.status.Status, spelled out: a Literal is documented inline as OpenAI documents it, where the
# enum would become a schema component of its own.
ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]


class ConversationParam(msgspec.Struct):
    id: str


class CreateResponse(msgspec.Struct):
    """Every generation parameter not named here (`tools`, `reasoning`, `text`, `provider`, `models`, `plugins`,
    ...) is sent to OpenRouter as given."""

    model: str
    input: str | list[ItemObject]
    instructions: str | None = None
    conversation: str | ConversationParam | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    metadata: Metadata | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    context_management: list[dict[str, Any]] | None = None


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int
    cost: float | None = None


class ResponseError(msgspec.Struct):
    code: str
    message: str


class Response(msgspec.Struct):
    id: str
    object: Literal["response"]
    created_at: int
    status: ResponseStatus
    background: bool
    completed_at: int | None
    conversation: ConversationParam | None
    error: ResponseError | None
    incomplete_details: dict[str, Any] | None
    instructions: str | list[ItemObject] | None
    metadata: Metadata
    model: str
    output: list[ItemObject]
    previous_response_id: str | None
    store: bool
    usage: ResponseUsage | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    parallel_tool_calls: bool
    reasoning: dict[str, Any] | None
    service_tier: str
    temperature: float
    presence_penalty: float
    frequency_penalty: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_logprobs: int
    top_p: float
    truncation: str
    safety_identifier: str | None
    prompt_cache_key: str | None


class DeletedResponse(msgspec.Struct):
    id: str
    object: Literal["response"]
    deleted: bool


class ResponseItemList(msgspec.Struct):
    """`first_id`/`last_id` are null when `data` is empty (OpenAI's schema has strings; there is no id to give)."""

    object: Literal["list"]
    data: list[ItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponseStreamEvent(msgspec.Struct):
    """One server-sent event (`event: <type>`, `data: <this>`); its other fields are those of its type in
    OpenAI's `ResponseStreamEvent` (`response`, `item`, `part`, `delta`, `text`, `output_index`, ...)."""

    type: str
    sequence_number: int


class RetrieveResponseQuery(msgspec.Struct):
    stream: bool = False
    starting_after: int | None = msgspec.field(default=None)
    include_obfuscation: Annotated[
        bool, msgspec.Meta(description="Checked; events carry no obfuscation padding either way")
    ] = True
    include: Annotated[
        list[str] | None, msgspec.Meta(description="Checked against OpenAI's IncludeEnum; what is stored is shown")
    ] = None
