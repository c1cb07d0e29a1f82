"""The OpenAI Response object, rendered from what we stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from service.items import item_view
from service.responses.response_error import shown_error
from service.responses.status import RUNNING, Status
from service.responses.usage import sane_usage

# Echoed generation parameters and, when the client left one out, OpenAI's documented default for it (what the
# model was run with, since OpenRouter applies the same defaults): clients and checkers read these as numbers and
# strings, not nulls.
_ECHO_DEFAULTS: dict[str, Any] = {
    "max_output_tokens": None,
    "max_tool_calls": None,
    "parallel_tool_calls": True,
    "reasoning": None,
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "top_logprobs": 0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "safety_identifier": None,
    "prompt_cache_key": None,
    "prompt": None,
}
# The tier the upstream reported, else the request's, else OpenAI's default for a request.
_DEFAULT_SERVICE_TIER = "auto"


# The stored parameters a Response shows; the others (whatever a client sent on, OpenRouter's own) are skipped
# unread, however large: a GET of the response decodes only these.
_SHOWN = (*_ECHO_DEFAULTS, "service_tier", "user", "prompt_cache_retention", "instructions")
_ShownParams = msgspec.defstruct("_ShownParams", [(name, Any, msgspec.UNSET) for name in _SHOWN], omit_defaults=True)
_shown_decoder = msgspec.json.Decoder(_ShownParams)


def shown_params(params_json: str) -> dict[str, Any]:
    """The stored parameters a Response shows, as the request gave them (a name it did not give is absent)."""
    shown = _shown_decoder.decode(params_json)
    return {name: value for name in _SHOWN if (value := getattr(shown, name)) is not msgspec.UNSET}


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def full_usage(usage: dict[str, Any] | None, status: str = Status.COMPLETED) -> dict[str, Any] | None:
    """OpenAI's usage with both detail objects present (the SDK's types require them), cost kept. Null only
    while the response runs, as OpenAI shows it; an ended response the upstream reported no usage for (cancelled
    or cut before its end) counts zeros."""
    if usage is None:
        if status in RUNNING:
            return None
        usage = {}
    result = sane_usage(usage)  # again: a usage stored before its checks existed is shown in OpenAI's shape too
    result.setdefault("input_tokens", 0)
    result.setdefault("output_tokens", 0)
    result.setdefault("total_tokens", result["input_tokens"] + result["output_tokens"])
    result["input_tokens_details"] = {
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        **result.get("input_tokens_details", {}),
    }
    result["output_tokens_details"] = {"reasoning_tokens": 0, **result.get("output_tokens_details", {})}
    return result


def _with_strict(tool: Any) -> Any:
    """Function tools are echoed with `strict` and `parameters` (null when the request left them out, as the spec
    allows: its FunctionTool requires both keys)."""
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {**tool, **{name: None for name in ("parameters", "strict") if name not in tool}}
    return tool


@dataclass
class ResponseState:
    id: str
    created_at: datetime
    status: str
    model: str | None
    params: dict[str, Any]
    instructions: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    conversation_id: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    upstream_model: str | None = None
    service_tier: str | None = None  # what the upstream reported it served the turn with
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    completed_at: datetime | None = None
    output: list[tuple[str, str, str]] = field(default_factory=list)  # (id, status, body)

    @classmethod
    def from_row(cls, row: Any, output: list[Any]) -> ResponseState:
        params = shown_params(row.params_json)
        return cls(
            id=row.id,
            created_at=row.created_at,
            status=row.status,
            model=row.model,
            params=params,
            # The exact text is in params (JSON keeps U+0000); the column has it without NUL, for listing.
            instructions=params.get("instructions", row.instructions),
            metadata=row.metadata,
            conversation_id=row.conversation_id,
            previous_response_id=row.previous_response_id,
            background=row.background,
            upstream_model=row.upstream_model,
            service_tier=row.service_tier,
            usage=row.usage,
            error=row.error,
            incomplete_details=row.incomplete_details,
            completed_at=row.completed_at,
            output=[(o.id, o.status, o.body) for o in output],
        )

    def render(self) -> dict[str, Any]:
        output = [item_view(*item) for item in self.output]
        echo = {name: self.params.get(name, default) for name, default in _ECHO_DEFAULTS.items()}
        # A response stored before its parameters were checked may hold anything there: it still renders.
        tools = echo["tools"]
        echo["tools"] = [_with_strict(tool) for tool in tools] if isinstance(tools, list) else []
        text = echo["text"]
        if isinstance(text, dict) and text.get("format") is None:  # the format the model was run with
            echo["text"] = {**text, "format": _ECHO_DEFAULTS["text"]["format"]}
        echo["service_tier"] = self.service_tier or self.params.get("service_tier") or _DEFAULT_SERVICE_TIER
        for name in ("user", "prompt_cache_retention"):  # omitted rather than null, as OpenAI does
            if name in self.params:
                echo[name] = self.params[name]
        if echo.get("prompt_cache_retention") == "in-memory":  # an earlier SDK's spelling, shown as the spec's
            echo["prompt_cache_retention"] = "in_memory"
        return {
            "id": self.id,
            "object": "response",
            "created_at": _epoch(self.created_at),
            "status": self.status,
            "background": self.background,
            "completed_at": _epoch(self.completed_at) if self.status == Status.COMPLETED else None,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "error": shown_error(self.error),
            "incomplete_details": self.incomplete_details,
            "instructions": self.instructions,
            "metadata": self.metadata,
            "model": self.upstream_model or self.model,
            "output": output,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "usage": full_usage(self.usage, self.status),
            **echo,
        }
