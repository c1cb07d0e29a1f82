"""Tool calls and their outputs go upstream together, or not at all.

OpenRouter's providers refuse a `function_call_output` whose `function_call` is not in the input (and OpenAI
refuses a call without its output, or without the reasoning item it came with); the same holds for every kind of
tool call (custom, computer, shell, apply_patch) and for an MCP approval response without its request
(service/context/ledger.py lists the pairs). Truncation cuts at user
messages, which keeps a turn's calls with their outputs; but an output sent after a later user message, a
summary standing for the calls before it, or a new input answering a call the cut dropped would leave one
alone. So, in what is sent:
- a call that the new input answers is kept, with the reasoning items just before it, wherever the cut fell
  (`answered_calls`: the fitting counts them as sent);
- a tool output whose call is not sent is left out (`orphaned_outputs`), and so is, wherever the cut fell, an
  output that answers no call waiting for it (none, or one answered already) and a call no output answers but
  for the thread's latest ones the new input answers: the thread's counts pair them (`CallPairing`, read in
  order: an id used again by a later call opens a new call);
- a reasoning item is sent only before the item it came with (OpenAI refuses it otherwise): one followed by
  anything else, or ending the history, once what is left out is left out, is left out too
  (`CountedItems.unsendable`).
Only the items of those kinds are decoded: the new ones on each turn, and all of them only when something was cut.
And as OpenAI does, a turn that leaves its thread's latest function calls unanswered is refused
(`unanswered_call`: the calls since the last user message are read).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import msgspec

from service.context.ledger import (
    CALL_KEY_FIELDS,
    OUTPUT_KEY_FIELDS,
    REASONING,
    TOOL_CALL,
    TOOL_OUTPUT,
    USER_MESSAGE,
    CallPairing,
    CountedItems,
    call_id_of,
    call_of,
    kind_of_body,
)


def answered_call_ids(input_bodies: Iterable[str]) -> list[str]:
    """The call ids the new input's tool outputs answer."""
    answered = []
    for body in input_bodies:
        call_id = call_id_of(body) if kind_of_body(body) == TOOL_OUTPUT else None
        if call_id is not None:
            answered.append(call_id)
    return answered


def answered_calls(counted: CountedItems, call_ids: Sequence[str]) -> list[int]:
    """The history items that must be sent with a new input answering `call_ids`: each call (the latest with
    that id), and the reasoning items right before it. Searched from the end, where such calls are."""
    wanted, found = set(call_ids), []
    end = len(counted)
    while wanted:
        index = counted.kinds.rfind(bytes([TOOL_CALL]), 0, end)
        if index < 0:
            break
        end = index
        call_id = call_id_of(counted.item_text(index))
        if call_id not in wanted:
            continue
        wanted.discard(call_id)
        found.append(index)
        before = index - 1
        while before >= 0 and counted.kinds[before] == REASONING:
            found.append(before)
            before -= 1
    return sorted(found)


def orphaned_outputs(counted: CountedItems, start: int, pinned: Sequence[int]) -> tuple[int, ...]:
    """The tool outputs from `start` on whose call is neither at or after `start` nor pinned."""
    if counted.kinds.find(bytes([TOOL_OUTPUT]), start) < 0:
        return ()
    sent_calls = {call_id_of(counted.item_text(index)) for index in pinned if counted.kinds[index] == TOOL_CALL}
    orphans = []
    for index, body in counted.texts_from(start):
        kind = counted.kinds[index]
        if kind in (TOOL_CALL, TOOL_OUTPUT):
            call_id = call_id_of(body)
            if kind == TOOL_CALL:
                sent_calls.add(call_id)
            elif call_id not in sent_calls:
                orphans.append(index)
    return tuple(orphans)


def _paired(kinds: Sequence[int], bodies: Sequence[str]) -> CallPairing:
    """These items' calls paired with their outputs, in order (as the thread's counts pair them)."""
    calls = CallPairing(answers={})
    for index, kind in enumerate(kinds):
        if kind in (TOOL_CALL, TOOL_OUTPUT):
            calls.read(index, kind, bodies[index])
    return calls


def _with_reasoning(kinds: Sequence[int], calls: Iterable[int]) -> set[int]:
    """The calls with the reasoning items right before each."""
    found: set[int] = set()
    for index in calls:
        found.add(index)
        before = index - 1
        while before >= 0 and kinds[before] == REASONING:
            found.add(before)
            before -= 1
    return found


def calls_answered_after(kinds: Sequence[int], bodies: Sequence[str], end: int) -> list[int]:
    """The items before `end` that a summary standing for them must not replace: each tool call answered by an
    output at or after `end`, with the reasoning items right before the call. Sent after the summary, each call
    still goes upstream before its output."""
    if TOOL_OUTPUT not in kinds[end:]:
        return []
    answers = _paired(kinds, bodies).answers or {}
    return sorted(_with_reasoning(kinds, (call for output, call in answers.items() if output >= end > call)))


def unpaired(kinds: Sequence[int], bodies: Sequence[str]) -> set[int]:
    """The tool calls without their output among these items (with the reasoning items right before them), and
    the outputs that answer no call waiting: what cannot go upstream as it is, as in a summary call's input."""
    if TOOL_CALL not in kinds and TOOL_OUTPUT not in kinds:
        return set()
    calls = _paired(kinds, bodies)
    alone = _with_reasoning(kinds, [*calls.lone_calls, *calls.waiting.values()])
    return alone | set(calls.lone_outputs)


def pending_calls(kinds: Sequence[int], bodies: Sequence[str]) -> list[int]:
    """The tool calls after the last user message that no output answers, with the reasoning items right before
    them: what a compacted window must still hold for the client to answer them (the summary stands for the rest,
    and a summary call is never given a call without its output)."""
    last_user = max((index for index, kind in enumerate(kinds) if kind == USER_MESSAGE), default=-1)
    alone = unpaired(kinds, bodies)
    return sorted(i for i in alone if i > last_user and kinds[i] in (TOOL_CALL, REASONING))


# The calls OpenAI refuses to see go unanswered: "No tool output found for function call …".
_CHECKED_CALLS = frozenset({"function_call", "custom_tool_call"})


def unanswered_call(counted: CountedItems, start: int, inputs: Sequence[tuple[str, str]]) -> str | None:
    """The call id of the first function or custom tool call sent after the history's last user message (from
    item `start` on), or in the new input (`inputs`: each item's type and stored JSON), that no output after it
    answers; None when there is none. A call cut off before its end (status `incomplete`) is none to answer. Only
    the history's calls since its last user message: a call left unanswered before it was stored when nothing
    checked this, and went upstream then, so refusing it now would stop a thread that worked."""
    waiting: dict[str | None, None] = {}

    def read(body: str) -> None:
        call = call_of(body)
        if call.type in _CHECKED_CALLS and call.status != "incomplete":
            waiting[call.key] = None
        elif call.type in OUTPUT_KEY_FIELDS:
            waiting.pop(call.key, None)

    first = max(counted.kinds.rfind(bytes([USER_MESSAGE])) + 1, start)
    if counted.kinds.find(bytes([TOOL_CALL]), first) >= 0:
        for index, body in counted.texts_from(first):
            if counted.kinds[index] in (TOOL_CALL, TOOL_OUTPUT):
                read(body)
    for kind, body in inputs:
        if kind in _CHECKED_CALLS or kind in OUTPUT_KEY_FIELDS:
            read(body)
    return next((call_id for call_id in waiting if call_id is not None), None)


# The outputs OpenAI refuses when the context holds no call they answer ("No tool call found for function call
# output with call_id …"); OpenRouter's providers refuse them too, so a thread that stored one could not go on.
# Every kind of tool output whose call holds the id as `call_id` (an MCP approval response names its request's
# `id`, and its request may go unanswered).
_CHECKED_OUTPUTS = frozenset(kind for kind, field in OUTPUT_KEY_FIELDS.items() if field == "call_id")


def output_without_call(history: str, inputs: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The type and call id of the first input output (`inputs`: each item's type and stored JSON) whose call is
    neither earlier in the input nor in `history` (stored JSON texts, each call holding its id as
    `"call_id":"…"`, encoded as every stored item is); None when each has its call."""
    called: set[str | None] = set()
    for kind, body in inputs:
        if kind in CALL_KEY_FIELDS:
            called.add(call_id_of(body))
        elif kind in _CHECKED_OUTPUTS:
            call_id = call_id_of(body)
            if call_id is None or call_id in called:
                continue
            if f'"call_id":{msgspec.json.encode(call_id).decode()}' not in history:
                return kind, call_id
    return None


def repeated_output(waiting: Collection[str | None], inputs: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The type and call id of the first input output (`inputs`: each item's type and stored JSON) that answers
    a call no longer waiting for one (`waiting`: the ids of the thread's calls that are): one answered already,
    in the thread or earlier in this input. None when there is none. An output whose call is nowhere is
    output_without_call's to refuse."""
    open_calls = set(waiting)
    for kind, body in inputs:
        if kind in CALL_KEY_FIELDS:
            open_calls.add(call_id_of(body))
        elif kind in _CHECKED_OUTPUTS:
            call_id = call_id_of(body)
            if call_id in open_calls:
                open_calls.discard(call_id)
            elif call_id is not None:
                return kind, call_id
    return None
