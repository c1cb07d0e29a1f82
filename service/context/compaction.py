"""Compaction: OpenRouter has no compaction item, so the service makes its own.

A model (the turn's own, or COMPACTION_MODEL) is asked, through the same upstream client, for a summary of
what is being replaced; the summary is sealed (service/context/sealing.py) into
`{"type": "compaction", "id": "cmp_…", "encrypted_content": …}`. As in OpenAI's design, a compaction item
stands for every item before it except user messages, which are kept as they are: when a history holding one
goes upstream, the items before the latest compaction item that are not user messages are left out, and the
compaction item is sent in its place as a developer message holding the summary (`render`). A tool call answered
only after the compaction item is not left out: it is sent right after the summary, before its output, as
providers refuse an output without its call (service/context/pairing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from service.context import pairing
from service.context.ledger import COMPACTION, REASONING, TOOL_CALL, TOOL_OUTPUT, USER_MESSAGE, kind_of
from service.context.sealing import InvalidSeal, Sealer, Summary
from service.errors import InvalidRequest
from service.ids import new_id
from service.upstream.client import OpenRouterClient
from service.upstream.errors import UpstreamError, refused_before_upstream

SUMMARY_INSTRUCTIONS = (
    "You are compacting a long conversation so that it can continue within a limited context window. Write a "
    "summary of everything above that a capable assistant needs to carry on the conversation seamlessly: the "
    "user's goals and preferences, facts and decisions established, names, numbers, code and file details that "
    "may matter later, what was tried and what came of it, and what remains open. The user's own messages are "
    "kept verbatim, so do not repeat them; summarize everything else. Answer with the summary only."
)
_RENDERED_PREFIX = "Summary of the earlier part of this conversation (it was compacted):\n\n"


def render(summary: Summary) -> str:
    """The message OpenRouter gets in a compaction item's place."""
    message = {
        "type": "message",
        "role": "developer",
        "content": [{"type": "input_text", "text": _RENDERED_PREFIX + summary.text}],
    }
    return msgspec.json.encode(message).decode()


def compaction_item(encrypted_content: str) -> dict[str, Any]:
    return {"type": "compaction", "id": new_id("cmp"), "encrypted_content": encrypted_content}


@dataclass
class Composed:
    """A history and new input with compaction applied: what goes upstream before any truncation."""

    history: list[str]  # item texts
    history_kinds: list[int]
    history_sources: list[int]  # each history item's index in the history given, -1 for a rendered compaction
    input: list[str]
    compacted: bool  # some compaction item was rendered
    input_kinds: list[int]  # each input item's kind (a rendered compaction item's: COMPACTION)


async def compose(sealer: Sealer, tenant_id: str, history: list[str], inputs: list[str]) -> Composed:
    """Drop what the latest compaction item stands for and render it. A compaction item that is not ours, or
    was altered, is refused (400, nothing is sent)."""
    combined = history + inputs
    decoded = [msgspec.json.decode(body) for body in combined]
    kinds = [kind_of(item) for item in decoded]
    latest = max((i for i, kind in enumerate(kinds) if kind == COMPACTION), default=-1)
    if latest < 0:
        return Composed(history, kinds[: len(history)], list(range(len(history))), inputs, False, kinds[len(history) :])
    try:
        summary = await sealer.open(tenant_id, decoded[latest].get("encrypted_content"))
    except InvalidSeal:
        if latest >= len(history):
            raise refused_before_upstream(
                "A compaction item's encrypted_content is not valid: it was altered, or not made by this service "
                "for this project",
                param=f"input[{latest - len(history)}].encrypted_content",
                code="invalid_encrypted_content",
            ) from None
        raise refused_before_upstream(
            f"The stored compaction item {decoded[latest].get('id')!r} of this thread can no longer be opened (it "
            "was sealed with a key this service does not hold, or altered in the database): delete it from the "
            "conversation, or continue the thread from before it",
            param="input",
            code="invalid_encrypted_content",
        ) from None
    carried = pairing.calls_answered_after(kinds, combined, latest)
    # (index in combined, text, kind), in the order sent; the carried calls go right after the summary, on its side.
    kept: list[tuple[int, str, int]] = []
    for index, body in enumerate(combined):
        if index < latest and kinds[index] != USER_MESSAGE:
            continue
        if index == latest:
            kept.append((index, render(summary), COMPACTION))
            kept.extend((carry, combined[carry], kinds[carry]) for carry in carried)
        else:
            kept.append((index, body, kinds[index]))
    cut = len(history)
    in_history = [entry for entry in kept if (latest if entry[0] in carried else entry[0]) < cut]
    in_input = [entry for entry in kept if (latest if entry[0] in carried else entry[0]) >= cut]
    return Composed(
        [text for _, text, _ in in_history],
        [kind for _, _, kind in in_history],
        [-1 if index == latest else index for index, _, _ in in_history],
        [text for _, text, _ in in_input],
        True,
        [kind for _, _, kind in in_input],
    )


async def check_items(sealer: Sealer, tenant_id: str, items: Any, *, param: str) -> None:
    """Refuse a forged or altered compaction item among `items` (raw item objects) before anything is stored or
    sent."""
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or item.get("type") != "compaction":
            continue
        try:
            await sealer.open(tenant_id, item.get("encrypted_content"))
        except InvalidSeal:
            raise InvalidRequest(
                "The compaction item's encrypted_content is not valid: it was altered, or not made by this service "
                "for this project",
                param=f"{param}[{index}].encrypted_content",
                code="invalid_encrypted_content",
            ) from None


# What a tool item holds besides the fields that name it, as the summary call reads it.
_NAMING_FIELDS = frozenset({"type", "id", "status", "call_id", "approval_request_id"})


def _text_of(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return " ".join(
            part
            if isinstance(part, str)
            else part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else "[attachment]"
            for part in output
        )
    return msgspec.json.encode(output).decode()


def as_summary_text(body: str, kind: int) -> str:
    """A tool call or output, or a reasoning item, as the summary call reads it: a message saying what was called
    and what came back, or what the model thought (its summary). A summary call defines no tools, and a provider
    may refuse tool calls in a request that defines none (Anthropic's API does); a reasoning item goes upstream
    only before the item it came with, which is a message here, and its encrypted content opens only for the
    model that wrote it. The summarizing model needs only to read them. Other items are as stored."""
    if kind not in (TOOL_CALL, TOOL_OUTPUT, REASONING):
        return body
    item = msgspec.json.decode(body)
    if not isinstance(item, dict):
        return body
    if kind == REASONING:
        # Its summary, else its own text (reasoning_text parts), as some providers give only that.
        parts = item.get("summary") or item.get("content")
        thought = _text_of(parts) if isinstance(parts, list) and parts else ""
        message = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": f"[reasoning] {thought}".strip()}],
        }
        return msgspec.json.encode(message).decode()
    key = item.get("call_id") or item.get("approval_request_id") or item.get("id") or ""
    if kind == TOOL_CALL:
        fields = {k: v for k, v in item.items() if k not in _NAMING_FIELDS}
        text = f"[{item.get('type')} {key}] {msgspec.json.encode(fields).decode()}"
        message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    else:
        answer = item["output"] if "output" in item else {k: v for k, v in item.items() if k not in _NAMING_FIELDS}
        text = f"[{item.get('type')} {key}] {_text_of(answer)}"
        message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return msgspec.json.encode(message).decode()


async def summarize(
    upstream: OpenRouterClient,
    model: str,
    history: str,
    *,
    session_id: str | None,
    forwarded: dict[str, Any] | None = None,
) -> tuple[Summary, dict[str, Any] | None]:
    """Ask `model` for a summary of `history` (rendered item texts joined by commas), with `forwarded` (a
    compact request's prompt-cache and tier parameters) on the call. Raises UpstreamError when it fails."""
    head: dict[str, Any] = {
        **(forwarded or {}),
        "model": model,
        "store": False,
        "stream": False,
        "instructions": SUMMARY_INSTRUCTIONS,
    }
    if session_id:
        head["session_id"] = session_id
    request = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Summarize now."}]}
    ask = msgspec.json.encode(request).decode()
    joined = f"{history},{ask}" if history else ask
    body = msgspec.json.encode(head)[:-1] + b',"input":[' + joined.encode() + b"]}"
    result = await upstream.create(body)
    if result.get("status") not in (None, "completed"):
        # Cut off (its max_output_tokens, the model's own limit): a partial summary would stand for the whole
        # history before it, for good, and nothing would show what it left out. (No status reads as completed,
        # as for a turn's answer: service/responses/outcome.py.)
        reason = (result.get("incomplete_details") or {}).get("reason") if isinstance(result, dict) else None
        raise UpstreamError(
            f"The compaction model's summary was cut off ({reason or result.get('status')}); nothing was compacted",
            kind="protocol",
        )
    texts = [
        part.get("text", "")
        for item in result.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
    ]
    text = "".join(texts).strip()
    if not text:
        raise UpstreamError("The compaction model answered without a summary", kind="protocol")
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else None
    return Summary(text=text, model=str(result.get("model") or model)), usage


_SUMMED_USAGE = ("input_tokens", "output_tokens", "total_tokens")
_SUMMED_DETAILS = (("input_tokens_details", "cached_tokens"), ("output_tokens_details", "reasoning_tokens"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def with_summary_usage(usage: Any, summary: dict[str, Any] | None) -> Any:
    """A turn's usage with its compaction's summary call added: the turn used (and is billed for) both calls."""
    if not isinstance(summary, dict):
        return usage
    if not isinstance(usage, dict):
        return summary
    total = dict(usage)
    for name in _SUMMED_USAGE:
        if _number(summary.get(name)):
            total[name] = (total[name] if _number(total.get(name)) else 0) + summary[name]
    for group, name in _SUMMED_DETAILS:
        extra = summary.get(group)
        if isinstance(extra, dict) and _number(extra.get(name)):
            found = total.get(group)
            own: dict[str, Any] = found if isinstance(found, dict) else {}
            total[group] = {**own, name: (own[name] if _number(own.get(name)) else 0) + extra[name]}
    if _number(summary.get("cost")) and (_number(total.get("cost")) or "cost" not in total):
        # Rounded as OpenRouter's own figures are: adding two floats would show 0.00042000000000000004.
        total["cost"] = round(total.get("cost", 0) + summary["cost"], 12)
    return total
