"""What the offline demo upstream answers, so function calling, reasoning, background, cancel and resume can be
tried with `make run` and no key (README, "Trying it offline"):

- a function call, when the request has function tools and `tool_choice` is `required` or names a function, or
  is `auto` (the default) and the last user message has the word "tool" in it; then, once the call's
  `function_call_output` comes back, a message quoting that output;
- a reasoning item before the answer when the last user message has the word "think";
- a slow stream (0.25 s between events) when it has the word "slowly".
"""

from __future__ import annotations

import re
from typing import Any

from service.ids import new_id

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


def _function_names(request: dict[str, Any]) -> list[str]:
    tools = request.get("tools") if isinstance(request.get("tools"), list) else []
    return [
        str(tool["name"])
        for tool in tools or []
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)
    ]


def function_to_call(request: dict[str, Any], items: list[Any]) -> str | None:
    """The function the demo calls now, or None to answer with a message."""
    names = _function_names(request)
    last = items[-1] if items else None
    if not names or (isinstance(last, dict) and last.get("type") == "function_call_output"):
        return None
    choice = request.get("tool_choice", "auto")
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in names:
        return str(choice["name"])
    if choice == "required" or (choice == "auto" and asks(items, "tool")):
        return names[0]
    return None


def function_call(name: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": new_id("fc"),
        "call_id": new_id("call"),
        "name": name,
        "arguments": "{}",
        "status": "completed",
    }


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
