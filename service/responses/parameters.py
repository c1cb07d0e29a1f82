"""The generation parameters of a turn, checked where OpenAI's spec and OpenRouter's agree on their type or range.

They go upstream as sent, and are stored and echoed in the Response object. A value neither accepts would
otherwise be refused by the upstream only after the turn was claimed and stored (a failed response in the
conversation for a typo), or stored and then echoed in a shape no client can read. Values only one of the two
knows (OpenRouter's own tools and effort levels) are let through: the upstream is the judge of those.
"""

from __future__ import annotations

from typing import Any

from service.errors import InvalidRequest

_NUMBERS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
# (lowest, highest): None where the spec sets no bound.
_INTEGERS: dict[str, tuple[int, int | None]] = {
    "max_output_tokens": (1, None),
    "max_tool_calls": (0, None),
    "top_logprobs": (0, 20),
}
_BOOLEANS = ("parallel_tool_calls",)
_STRINGS = ("user", "safety_identifier", "prompt_cache_key")
_TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
# OpenRouter's effort levels include OpenAI's.
_REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_REASONING_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_TEXT_FORMATS = frozenset({"text", "json_schema", "json_object"})
_VERBOSITIES = frozenset({"low", "medium", "high"})
_ALLOWED_TOOLS_MODES = frozenset({"auto", "required"})
# Tool choices that name the tool they force (OpenAI's ToolChoiceFunction and ToolChoiceCustom).
_NAMED_TOOL_CHOICES = frozenset({"function", "custom"})
# OpenAI's maximum; OpenRouter passes it on.
_MAX_SAFETY_IDENTIFIER_CHARS = 64
_SERVICE_TIERS = frozenset({"auto", "default", "fast", "flex", "priority", "scale", "ultrafast"})
# OpenAI's spec spells it in_memory; earlier SDK releases (and clients built on them) send in-memory.
_PROMPT_CACHE_RETENTIONS = frozenset({"in_memory", "in-memory", "24h"})
# OpenAI's PromptCacheModeEnum, which OpenRouter's prompt_cache_options shares; its `ttl` is left to OpenRouter,
# whose providers keep caches for other times than OpenAI's one value.
_PROMPT_CACHE_MODES = frozenset({"implicit", "explicit"})


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# IncludeEnum in OpenAI's spec; OpenRouter's list is a part of it, so a value outside it is refused by both.
INCLUDE_VALUES = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)


def check_include_values(include: Any) -> None:
    if not isinstance(include, list) or not all(isinstance(value, str) for value in include):
        raise _invalid("include must be an array of strings", "include")
    for value in include:
        if value not in INCLUDE_VALUES:
            raise _invalid(
                f"Invalid include value {value[:100]!r}: supported values are {', '.join(sorted(INCLUDE_VALUES))}",
                "include",
            )


def _check_number(params: dict[str, Any], name: str, low: float, high: float) -> None:
    value = params[name]
    if not _is_number(value) or not low <= value <= high:
        raise _invalid(f"{name} must be a number between {low:g} and {high:g} (got {value!r})", name)


def _check_integer(params: dict[str, Any], name: str, low: int, high: int | None) -> None:
    value = params[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"of at least {low}"
        raise _invalid(f"{name} must be an integer {bound} (got {value!r})", name)


def _one_of(value: Any, allowed: frozenset[str], param: str) -> None:
    # A string first: an array or an object cannot be looked up in a set (unhashable), and is as wrong.
    if value is not None and not (isinstance(value, str) and value in allowed):
        raise _invalid(f"{param} must be one of {', '.join(sorted(allowed))} (got {value!r})", param)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{param} must be an object", param)
    return value


def _optional(value: dict[str, Any], name: str, kind: type, what: str, param: str) -> None:
    """`value[name]`, when present and not null, is of `kind`."""
    field = value.get(name)
    if field is not None and not isinstance(field, kind):
        raise _invalid(f"{param}.{name} must be {what}", f"{param}.{name}")


def _name(value: dict[str, Any], param: str, what: str) -> None:
    if not isinstance(value.get("name"), str) or not value["name"]:
        raise _invalid(f"{param}.name is required for {what}", f"{param}.name")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _invalid("tools must be an array of tools", "tools")
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(_object(tool, param).get("type"), str) or not tool["type"]:
            raise _invalid(f"{param}.type is required and must be a string", f"{param}.type")
        if tool["type"] == "function":
            _name(tool, param, "a function tool")
            _optional(tool, "description", str, "a string", param)
            _optional(tool, "parameters", dict, "an object (a JSON schema)", param)
            _optional(tool, "strict", bool, "a boolean", param)


def _check_tool_choice(choice: Any) -> None:
    if isinstance(choice, str):
        _one_of(choice, _TOOL_CHOICE_MODES, "tool_choice")
        return
    kind = _object(choice, "tool_choice").get("type")
    if not isinstance(kind, str):
        raise _invalid("tool_choice.type is required and must be a string", "tool_choice.type")
    if kind in _NAMED_TOOL_CHOICES:
        _name(choice, "tool_choice", f"a {kind} tool choice")
    elif kind == "mcp" and not isinstance(choice.get("server_label"), str):
        raise _invalid("tool_choice.server_label is required for an mcp tool choice", "tool_choice.server_label")
    elif kind == "allowed_tools":
        if choice.get("mode") is None:
            raise _invalid("tool_choice.mode is required for allowed_tools", "tool_choice.mode")
        _one_of(choice["mode"], _ALLOWED_TOOLS_MODES, "tool_choice.mode")
        tools = choice.get("tools")
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise _invalid("tool_choice.tools must be an array of tool objects", "tool_choice.tools")


def _check_reasoning(reasoning: Any) -> None:
    _object(reasoning, "reasoning")
    _one_of(reasoning.get("effort"), _REASONING_EFFORTS, "reasoning.effort")
    _one_of(reasoning.get("summary"), _REASONING_SUMMARIES, "reasoning.summary")
    # The deprecated name of `summary`, with its values.
    _one_of(reasoning.get("generate_summary"), _REASONING_SUMMARIES, "reasoning.generate_summary")
    # Strings in both specs (their values differ between them and grow): echoed, so at least of that type.
    _optional(reasoning, "mode", str, "a string", "reasoning")
    _optional(reasoning, "context", str, "a string", "reasoning")


def _check_text(text: Any) -> None:
    _one_of(_object(text, "text").get("verbosity"), _VERBOSITIES, "text.verbosity")
    form = text.get("format")
    if form is None:
        return
    kind = _object(form, "text.format").get("type")
    if not (isinstance(kind, str) and kind in _TEXT_FORMATS):
        raise _invalid(
            f"text.format.type must be one of {', '.join(sorted(_TEXT_FORMATS))} (got {kind!r})", "text.format.type"
        )
    if kind == "json_schema":
        _name(form, "text.format", "json_schema")
        _object(form.get("schema"), "text.format.schema")
        _optional(form, "description", str, "a string", "text.format")
        _optional(form, "strict", bool, "a boolean", "text.format")


def _check_prompt(prompt: Any) -> None:
    """A reusable prompt's reference, as the spec's Prompt (echoed on the Response as it was sent)."""
    _object(prompt, "prompt")
    if not isinstance(prompt.get("id"), str) or not prompt["id"]:
        raise _invalid("prompt.id is required: the prompt template's id", "prompt.id")
    _optional(prompt, "version", str, "a string", "prompt")
    _optional(prompt, "variables", dict, "an object", "prompt")
    for name, value in (prompt.get("variables") or {}).items():
        # A string or an input part (input_text, input_image, input_file); the upstream judges the part.
        if not isinstance(value, str) and not (isinstance(value, dict) and isinstance(value.get("type"), str)):
            raise _invalid(
                "prompt.variables values must be strings or input parts (objects with a type)",
                f"prompt.variables.{name[:100]}",
            )


def _check_prompt_cache_options(options: Any) -> None:
    _object(options, "prompt_cache_options")
    _one_of(options.get("mode"), _PROMPT_CACHE_MODES, "prompt_cache_options.mode")
    _optional(options, "ttl", str, "a string", "prompt_cache_options")


def check_parameters(params: dict[str, Any]) -> None:
    """Raises InvalidRequest naming the first parameter neither OpenAI nor OpenRouter would accept. `params`
    holds no null values (they mean "the default" and are not sent)."""
    for name, (low, high) in _NUMBERS.items():
        if name in params:
            _check_number(params, name, low, high)
    for name, (low_int, high_int) in _INTEGERS.items():
        if name in params:
            _check_integer(params, name, low_int, high_int)
    for name in _BOOLEANS:
        if name in params and not isinstance(params[name], bool):
            raise _invalid(f"{name} must be a boolean", name)
    for name in _STRINGS:
        if name in params and not isinstance(params[name], str):
            raise _invalid(f"{name} must be a string", name)
    if len(params.get("safety_identifier", "")) > _MAX_SAFETY_IDENTIFIER_CHARS:
        raise _invalid(
            f"safety_identifier must be at most {_MAX_SAFETY_IDENTIFIER_CHARS} characters", "safety_identifier"
        )
    if "include" in params:
        check_include_values(params["include"])
    if "tools" in params:
        _check_tools(params["tools"])
    if "tool_choice" in params:
        _check_tool_choice(params["tool_choice"])
    if "reasoning" in params:
        _check_reasoning(params["reasoning"])
    if "text" in params:
        _check_text(params["text"])
    if "service_tier" in params:
        _one_of(params["service_tier"], _SERVICE_TIERS, "service_tier")
    if "prompt_cache_retention" in params:
        _one_of(params["prompt_cache_retention"], _PROMPT_CACHE_RETENTIONS, "prompt_cache_retention")
    if "prompt" in params:
        _check_prompt(params["prompt"])
    if "prompt_cache_options" in params:
        _check_prompt_cache_options(params["prompt_cache_options"])
    if "moderation" in params:
        # OpenRouter has no moderation: sent on, it would be ignored, and the client would take its input and
        # output for moderated. A null is the default (none) and is taken.
        raise InvalidRequest(
            "moderation is not supported: this service's upstream (OpenRouter) runs no moderation of a response",
            param="moderation",
            code="unsupported_parameter",
        )
