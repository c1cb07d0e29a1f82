"""Validating a POST /v1/responses body, and building the body we send to OpenRouter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from service.context.fitting import compaction_threshold, truncation_mode
from service.errors import InvalidRequest
from service.items import NewItem, normalize_input
from service.metadata import validate_metadata
from service.responses.parameters import check_parameters
from service.upstream.body import STREAM_FROM_CHARS, SplicedBody, UpstreamBody

# Fields that are ours (state and delivery) and never go upstream. OpenRouter is stateless: `store` must be
# false or absent, and `previous_response_id`/`conversation` are rejected or unknown there.
_STATE_FIELDS = frozenset(
    {
        "input",
        "conversation",
        "previous_response_id",
        "store",
        "stream",
        "background",
        "metadata",
        "stream_options",
    }
)


@dataclass(frozen=True)
class TurnRequest:
    model: str
    input_items: list[NewItem]
    params: dict[str, Any]  # what goes upstream besides input (model, instructions, generation parameters)
    instructions: str | None
    conversation_id: str | None
    previous_response_id: str | None
    store: bool
    stream: bool
    background: bool
    metadata: dict[str, str]
    compact_first: bool = False  # the input ended with OpenAI's compaction_trigger


def _optional_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be a boolean", param=name)
    return value


def conversation_id_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("conversation must be a conversation id or an object with an id", param="conversation")
    return value


def continuation_of(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The conversation or the previous response a request continues (at most one of them), checked."""
    conversation_id = conversation_id_of(body.get("conversation"))
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise InvalidRequest("previous_response_id must be a response id", param="previous_response_id")
    if conversation_id and previous:
        raise InvalidRequest(
            "conversation and previous_response_id cannot be used together; pass one of them",
            param="previous_response_id",
            code="mutually_exclusive_parameters",
        )
    return conversation_id, previous


# OpenRouter's model ids are tens of characters; the model is stored in indexed columns (the admin listings'),
# whose entries PostgreSQL caps at about 2.7 kB: a longer one failed the turn's finish after the upstream call.
MAX_MODEL_CHARS = 256


def previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def previous_not_usable(response_id: str, status: str) -> InvalidRequest:
    """A previous response still running, failed or cancelled: nothing a turn could continue."""
    return InvalidRequest(
        f"Previous response '{response_id}' has status '{status}'; only a completed or incomplete response can "
        "be continued",
        param="previous_response_id",
        code="previous_response_not_usable",
    )


def previous_history_gone(response_id: str) -> InvalidRequest:
    """A response that ran in a conversation whose row is gone: the history before it went with it, and a turn
    continuing it would send only what is left. Retention's idle purge removes such rows now; a tenant's delete
    did before deleted conversations were kept (migration conversation_deleted_at), so the message names
    neither."""
    return InvalidRequest(
        f"Previous response '{response_id}' can no longer be continued: the conversation it belongs to was "
        "deleted, and with it the history before that response",
        param="previous_response_id",
        code="previous_response_not_usable",
    )


def model_of(body: dict[str, Any]) -> str:
    """The request's `model`, checked."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required and must be a non-empty string", param="model")
    if "\x00" in model:
        raise InvalidRequest("model cannot contain U+0000", param="model")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(f"model must be at most {MAX_MODEL_CHARS} characters", param="model")
    return model


def parse_turn_request(body: dict[str, Any], *, max_input_items: int) -> TurnRequest:
    model = model_of(body)
    if "input" not in body or body["input"] is None:
        raise InvalidRequest("input is required", param="input", code="missing_required_parameter")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string", param="instructions")
    conversation_id, previous = continuation_of(body)
    store = _optional_bool(body, "store", True)
    stream = _optional_bool(body, "stream", False)
    background = _optional_bool(body, "background", False)
    if conversation_id and not store:
        raise InvalidRequest(
            "store=false cannot be used with conversation: a conversation turn is always stored",
            param="store",
        )
    if background and not store:
        raise InvalidRequest("background responses must be stored (store=false is not allowed)", param="store")
    _check_stream_options(body.get("stream_options"), stream=stream)
    metadata = validate_metadata(body.get("metadata"))
    raw_input, compact_first = _without_compaction_trigger(body["input"])
    input_items = normalize_input(raw_input, param="input", max_items=max_input_items)
    if not input_items:
        raise InvalidRequest(
            "input must hold at least one item"
            + (" besides compaction_trigger (POST /v1/responses/compact compacts alone)" if compact_first else ""),
            param="input",
        )
    params = {key: value for key, value in body.items() if key not in _STATE_FIELDS and value is not None}
    check_parameters(params)
    truncation_mode(params)  # refused before anything is claimed or stored
    compaction_threshold(params)
    return TurnRequest(
        model=model,
        input_items=input_items,
        params=params,
        instructions=instructions,
        conversation_id=conversation_id,
        previous_response_id=previous,
        store=store,
        stream=stream,
        background=background,
        metadata=metadata,
        compact_first=compact_first,
    )


def _check_stream_options(options: Any, *, stream: bool) -> None:
    """OpenAI's `stream_options` (`include_obfuscation`), only with stream=true; these events carry no
    obfuscation padding either way, so nothing else reads it."""
    if options is None:
        return
    if not stream:
        raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict) or not isinstance(options.get("include_obfuscation", True), bool):
        raise InvalidRequest(
            "stream_options must be an object whose include_obfuscation is a boolean", param="stream_options"
        )


def _without_compaction_trigger(value: Any) -> tuple[Any, bool]:
    """OpenAI's `{"type": "compaction_trigger"}`: compact the context before this turn. It must be the final
    input item; it is taken off the input (nothing stores or sends it) and the turn compacts first, as
    `context_management` does once past its threshold."""
    if not isinstance(value, list):
        return value, False
    triggers = [
        i for i, item in enumerate(value) if isinstance(item, dict) and item.get("type") == "compaction_trigger"
    ]
    if not triggers:
        return value, False
    if triggers != [len(value) - 1]:
        raise InvalidRequest(
            "compaction_trigger must be the final input item, and appear once", param=f"input[{triggers[0]}]"
        )
    return value[:-1], True


def build_upstream_body(
    params: dict[str, Any], history: str, new_items: list[NewItem], *, stream: bool
) -> UpstreamBody:
    """The one place the upstream input array is built: the stored item texts (`history`, already joined by
    commas) spliced verbatim (no decode and re-encode), then the new input. `store` is always false; nothing
    stateful is forwarded. A long history is not joined into the body but sent from its text (SplicedBody)."""
    head = msgspec.json.encode({**params, "store": False, "stream": stream})
    new = ",".join(item.body for item in new_items).encode()
    if not history:
        return b"".join((head[:-1], b',"input":[', new, b"]}"))
    if len(history) >= STREAM_FROM_CHARS:
        return SplicedBody.of(head[:-1] + b',"input":[', history, b"," + new + b"]}")
    return b"".join((head[:-1], b',"input":[', history.encode(), b",", new, b"]}"))
