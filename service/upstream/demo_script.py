"""What the offline demo upstream answers, so function calling, reasoning, background, cancel and resume can be
tried with `make run` and no key (README, "Trying it offline"):

- a function call, when the request has function tools and `tool_choice` is `required` or names a function, or
  is `auto` (the default) and the last user message has the word "tool" in it; then, once the call's
  `function_call_output` comes back, a message quoting that output;
- a reasoning item before the answer when the last user message has the word "think";
- a slow stream (0.25 s between events) when it has the word "slowly";
- a function call's arguments, and the answer asked for with `text.format` (`json_schema`, as
  `responses.parse` sends it, or `json_object`), filled in as its schema says (demo_values.py).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from service.ids import new_id
from service.upstream.demo_values import example

SLOW_EVENT_DELAY = 0.25
_WORD = {word: re.compile(rf"\b{word}\b", re.IGNORECASE) for word in ("tool", "think", "slowly")}


def last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "input_text"]
                return " ".join(t for t in texts if isinstance(t, str))
    return ""


def asks(items: list[Any], word: str) -> bool:
    return bool(_WORD[word].search(last_user_text(items)))


def _functions(request: dict[str, Any]) -> dict[str, Any]:
    """The request's function tools: each name's `parameters` schema, in the order they were given."""
    tools = request.get("tools") if isinstance(request.get("tools"), list) else []
    return {
        str(tool["name"]): tool.get("parameters")
        for tool in tools or []
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)
    }


def function_to_call(request: dict[str, Any], items: list[Any]) -> str | None:
    """The function the demo calls now, or None to answer with a message."""
    names = list(_functions(request))
    last = items[-1] if items else None
    if not names or (isinstance(last, dict) and last.get("type") == "function_call_output"):
        return None
    choice = request.get("tool_choice", "auto")
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in names:
        return str(choice["name"])
    if choice == "required" or (choice == "auto" and asks(items, "tool")):
        return names[0]
    return None


def function_call(request: dict[str, Any], name: str) -> dict[str, Any]:
    arguments = example(_functions(request).get(name))
    return {
        "type": "function_call",
        "id": new_id("fc"),
        "call_id": new_id("call"),
        "name": name,
        "arguments": msgspec.json.encode(arguments if isinstance(arguments, dict) else {}).decode(),
        "status": "completed",
    }


def structured_text(request: dict[str, Any], items: list[Any]) -> str | None:
    """The answer's text as JSON when `text.format` asks for it, else None."""
    text = request.get("text")
    answer_format = text.get("format") if isinstance(text, dict) else None
    if not isinstance(answer_format, dict):
        return None
    if answer_format.get("type") == "json_schema":
        return msgspec.json.encode(example(answer_format.get("schema"))).decode()
    if answer_format.get("type") == "json_object":
        return msgspec.json.encode({"you_said": last_user_text(items)}).decode()
    return None


def tool_output_text(items: list[Any]) -> str | None:
    last = items[-1] if items else None
    if isinstance(last, dict) and last.get("type") == "function_call_output":
        output = last.get("output")
        return output if isinstance(output, str) else str(output)
    return None


def reasoning(items: list[Any]) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": new_id("rs"),
        "status": "completed",
        "summary": [{"type": "summary_text", "text": f"The user wrote {len(last_user_text(items))} characters."}],
    }
