"""Jinja2 templates (autoescaped) and the helpers they use to show items, times and money readably."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

# Unicode's bidirectional controls: in a tenant's text (a metadata value, a name) they reorder what follows them
# on the page (`region=eu` showed as `eue=noiger`), so an operator would misread it. Shown as their code points.
_BIDI_CONTROLS = {
    code: f"<U+{code:04X}>" for code in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def _bidi_visible(value: Any) -> Any:
    """Every value a template shows, before it is escaped (the templates' own markup is left as it is)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return value.translate(_BIDI_CONTROLS)
    return value


_env = Environment(
    loader=PackageLoader("service.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_bidi_visible,
)


def when(epoch: int | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.6f}".rstrip("0").rstrip(".")


def duration(milliseconds: int | None) -> str:
    """A turn's latency as people read one: `362 ms`, `1.26 s`, `95 s`."""
    if milliseconds is None:
        return "—"
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    return f"{milliseconds / 1000:.3g} s" if milliseconds < 100_000 else f"{round(milliseconds / 1000)} s"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _text_parts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    parts = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict):
            text = part.get("text") or part.get("refusal")
            parts.append(text if isinstance(text, str) else f"[{part.get('type', 'part')}]")
    return parts


def item_view(item: dict[str, Any]) -> dict[str, Any]:
    """What the thread page shows for one item: a kind, a heading and its text."""
    kind = item.get("type", "item")
    if kind == "message":
        return {"kind": "message", "role": item.get("role", "?"), "text": "\n".join(_text_parts(item.get("content")))}
    if kind == "function_call":
        return {"kind": "tool call", "role": item.get("name", "?"), "text": str(item.get("arguments", ""))}
    if kind == "function_call_output":
        output = item.get("output")
        return {
            "kind": "tool output",
            "role": item.get("call_id", ""),
            "text": output if isinstance(output, str) else pretty(output),
        }
    if kind == "reasoning":
        summary = "\n".join(_text_parts(item.get("summary"))) or "(no summary)"
        return {"kind": "reasoning", "role": "", "text": summary}
    return {"kind": kind, "role": "", "text": pretty(item)}


_env.filters.update(when=when, money=money, pretty=pretty, duration=duration)
_env.globals.update(item_view=item_view)


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)
