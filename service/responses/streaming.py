"""The streaming bridge: OpenRouter's events in, OpenAI's canonical events out.

`StreamAssembler` keeps, per output item, just what is needed to rebuild the item if the stream stops early
(the announced item, its content parts and their text so far). It re-numbers items by order of appearance,
announces an item and its content part before the first delta that needs them (OpenRouter's legacy events can
skip those), and closes whatever is still open when the stream ends, so a client always sees added/done pairs.
It never emits the lifecycle events (`response.created`, `response.queued`, `response.in_progress`, the terminal
one): those carry our Response object, which the turn runner renders from the turn's state (the terminal one from
what it stored).

Sequence numbers are assigned by the run (runner.TurnRun.publish) as events are published, so they are ours and
monotonic whatever the upstream numbered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from service.ids import new_id
from service.items import ID_PREFIX_BY_TYPE, usable_id
from service.rendering import client_event
from service.responses.outcome import UPSTREAM_FAILED_ERROR
from service.responses.status import Status
from service.upstream.sse import TERMINAL_TYPES

_encode = msgspec.json.encode

STREAM_CUT_ERROR_CODE = "server_error"
KEEPALIVE_FRAME = b": keep-alive\n\n"
_LIFECYCLE_TYPES = frozenset({"response.created", "response.in_progress", "response.queued"})
# Text events go to their content part (announced first if the upstream skipped that); other item events are
# relayed with our item id and output index.
_TEXT_PART_EVENTS = frozenset({"response.output_text.delta", "response.output_text.done"})
_PIECES_KEPT = 16
# The most content parts one event may open ahead of those announced: a content_index far ahead would otherwise
# announce (and store) every part up to it.
_PARTS_AHEAD = 16
_ARGUMENT_EVENTS = ("response.function_call_arguments.delta", "response.function_call_arguments.done")
# ResponseStreamEvent's types in OpenAI's spec: anything else an upstream sends (a provider's own event) is not
# relayed, so that every event a client reads is one its SDK knows.
OPENAI_EVENT_TYPES = frozenset(
    {
        "error",
        "response.audio.delta",
        "response.audio.done",
        "response.audio.transcript.delta",
        "response.audio.transcript.done",
        "response.code_interpreter_call.completed",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.completed",
        "response.content_part.added",
        "response.content_part.done",
        "response.created",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.failed",
        "response.file_search_call.completed",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.image_generation_call.completed",
        "response.image_generation_call.generating",
        "response.image_generation_call.in_progress",
        "response.image_generation_call.partial_image",
        "response.in_progress",
        "response.incomplete",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_list_tools.completed",
        "response.mcp_list_tools.failed",
        "response.mcp_list_tools.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.output_text.annotation.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.queued",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.refusal.delta",
        "response.refusal.done",
        "response.shell_call_command.added",
        "response.shell_call_command.delta",
        "response.shell_call_command.done",
        "response.shell_call_output_content.delta",
        "response.shell_call_output_content.done",
        "response.web_search_call.completed",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
    }
)


def sse_frame(event: dict[str, Any]) -> bytes:
    """One event as OpenAI frames it: `event: <type>` and `data: <json>` lines."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + _encode(event) + b"\n\n"


def split_frames(text: str) -> list[bytes]:
    """Stored event text back into frames (a frame's JSON never holds a raw newline, so blank lines split)."""
    return [frame.encode() + b"\n\n" for frame in text.split("\n\n") if frame]


@dataclass
class _Output:
    index: int
    item: dict[str, Any]
    upstream_index: int | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    texts: list[list[str]] = field(default_factory=list)
    texts_done: list[bool] = field(default_factory=list)
    parts_done: list[bool] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    summaries: dict[int, list[str]] = field(default_factory=dict)
    final: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return str(self.item["id"])

    def is_text(self, index: int) -> bool:
        return self.parts[index].get("type") == "output_text"

    def part(self, index: int) -> dict[str, Any]:
        part = self.parts[index]
        return {**part, "text": "".join(self.texts[index])} if self.is_text(index) else part

    def snapshot(self, status: str) -> dict[str, Any]:
        """The item as far as it got, for a stream that stopped before its `output_item.done`."""
        item = {**self.item, "status": status}
        kind = item.get("type")
        if kind == "message":
            item["content"] = [self.part(i) for i in range(len(self.parts))]
        elif kind == "function_call":
            item["arguments"] = str(item.get("arguments") or "") + "".join(self.arguments)
        elif kind == "reasoning" and self.summaries:
            item["summary"] = [
                {"type": "summary_text", "text": "".join(self.summaries[i])} for i in sorted(self.summaries)
            ]
        return item


class StreamAssembler:
    def __init__(self) -> None:
        self._outputs: list[_Output] = []
        self._by_upstream_index: dict[int, _Output] = {}
        self._by_item_id: dict[str, _Output] = {}
        self.upstream_id: str | None = None
        self.upstream_model: str | None = None
        self.final_response: dict[str, Any] | None = None  # the upstream's terminal Response, if it sent one
        # Argument events of function calls the upstream never announced, by item id or output index: held until
        # the call's output_item.done names the function (OpenAI announces a call with its name and call_id, and
        # the SDK's stream helper expects the announced item to be the call).
        self._held: dict[Any, list[dict[str, Any]]] = {}
        self.error: dict[str, Any] | None = None  # an in-band `error` event
        self.terminal_type: str | None = None
        self.ended = False

    # -- reading upstream events ----------------------------------------------------------------------
    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Canonical events for one (normalized) upstream event, without sequence numbers, in the shapes
        clients read (service/rendering.py; what is kept for storing stays as received)."""
        return [client_event(out) for out in self._feed(event)]

    def _feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind in _LIFECYCLE_TYPES:
            self._note_response(event.get("response"))
            return []
        if kind in TERMINAL_TYPES:
            response = event.get("response")
            self.final_response = response if isinstance(response, dict) else {}
            self.terminal_type = kind
            self._note_response(self.final_response)
            self.ended = True
            return []
        if kind == "error":
            self.error = {"code": event.get("code") or "server_error", "message": event["message"]}
            self.ended = True
            return []
        if kind == "response.output_item.added":
            return self._item_added(event)
        if kind == "response.output_item.done":
            return self._item_done(event)
        if kind == "response.content_part.added":
            out: list[dict[str, Any]] = []
            output = self._output_for(event, out)
            self._part_added(output, event, out)
            return out
        if kind == "response.content_part.done":
            out = []
            output = self._output_for(event, out)
            index = self._content_index(output, event, out)
            self._close_part(output, index, out, part=event.get("part"))
            return out
        if kind in _TEXT_PART_EVENTS:
            return self._text_event(event)
        return self._relay(event)

    def _note_response(self, response: Any) -> None:
        if not isinstance(response, dict):
            return
        if isinstance(response.get("id"), str):
            self.upstream_id = response["id"]
        if isinstance(response.get("model"), str):
            self.upstream_model = response["model"]

    def _new_output(self, item: dict[str, Any], upstream_index: Any, out: list[dict[str, Any]]) -> _Output:
        kind = str(item["type"]) if isinstance(item.get("type"), str) else "message"
        item = {**item, "type": kind}
        if not usable_id(item.get("id")) or item["id"] in self._by_item_id:
            # What the items API could not address, or an id another item of this answer has: one of ours.
            item["id"] = new_id(ID_PREFIX_BY_TYPE.get(kind, "item"))
        item.setdefault("status", "in_progress")
        if kind == "message":
            item.setdefault("role", "assistant")
            item["content"] = []  # parts are announced by content_part.added, as OpenAI does
        known_index = upstream_index if isinstance(upstream_index, int) else None
        output = _Output(index=len(self._outputs), item=item, upstream_index=known_index)
        self._outputs.append(output)
        self._by_item_id[output.id] = output
        if known_index is not None:
            self._by_upstream_index[known_index] = output
        # A copy: the item goes on changing (a call's arguments) before this event is sent.
        out.append({"type": "response.output_item.added", "output_index": output.index, "item": dict(item)})
        return output

    def _find(self, event: dict[str, Any]) -> _Output | None:
        item_id, index = event.get("item_id"), event.get("output_index")
        by_id = self._by_item_id.get(item_id) if isinstance(item_id, str) else None
        by_index = self._by_upstream_index.get(index) if isinstance(index, int) else None
        if by_id is not None and by_id.upstream_index is not None and isinstance(index, int):
            # An upstream that gave two items one id tells them apart by their output index.
            return by_id if by_id.upstream_index == index else by_index
        if by_id is not None:
            return by_id
        if by_index is not None:
            return by_index
        if item_id is None and index is None and self._outputs:
            return self._outputs[-1]  # legacy events name neither
        return None

    def _output_for(self, event: dict[str, Any], out: list[dict[str, Any]]) -> _Output:
        found = self._find(event)
        if found is not None:
            return found
        shell: dict[str, Any] = {"type": "message", "role": "assistant"}
        if str(event["type"]).startswith("response.reasoning"):
            shell = {"type": "reasoning", "summary": []}
        if isinstance(event.get("item_id"), str):
            shell["id"] = event["item_id"]
        return self._new_output(shell, event.get("output_index"), out)

    def _item_added(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        item = event.get("item")
        out: list[dict[str, Any]] = []
        if not isinstance(item, dict):
            return out
        existing = self._find({"item_id": item.get("id"), "output_index": event.get("output_index")})
        if existing is None:
            output = self._new_output(item, event.get("output_index"), out)
            parts = item.get("content") if item.get("type") == "message" else None
            for part in parts if isinstance(parts, list) else []:
                if isinstance(part, dict):
                    self._part_added(output, {"part": part}, out)
        return out

    def _part_added(self, output: _Output, event: dict[str, Any], out: list[dict[str, Any]]) -> int:
        part = event.get("part")
        part = dict(part) if isinstance(part, dict) else {"type": "output_text", "text": "", "annotations": []}
        text = part.get("text")
        if part.get("type") == "output_text":
            part.setdefault("annotations", [])
            part["text"] = ""
        output.parts.append(part)
        output.texts.append([text] if isinstance(text, str) and text else [])
        output.texts_done.append(False)
        output.parts_done.append(False)
        index = len(output.parts) - 1
        out.append(
            {
                "type": "response.content_part.added",
                "item_id": output.id,
                "output_index": output.index,
                "content_index": index,
                "part": part,
            }
        )
        return index

    def _content_index(self, output: _Output, event: dict[str, Any], out: list[dict[str, Any]]) -> int:
        index = event.get("content_index")
        if not isinstance(index, int) or not 0 <= index < len(output.parts) + _PARTS_AHEAD:
            index = max(0, len(output.parts) - 1)
        while len(output.parts) <= index:
            self._part_added(output, {}, out)
        return index

    def _text_event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        output = self._output_for(event, out)
        index = self._content_index(output, event, out)
        ids = {"item_id": output.id, "output_index": output.index, "content_index": index}
        if event["type"] == "response.output_text.delta":
            delta = event.get("delta")
            delta = delta if isinstance(delta, str) else ""
            _keep_piece(output.texts[index], delta)
            logprobs = event.get("logprobs")
            logprobs = logprobs if isinstance(logprobs, list) else []
            out.append({"type": "response.output_text.delta", **ids, "delta": delta, "logprobs": logprobs})
            return out
        if not output.texts_done[index]:
            text = event.get("text")
            if isinstance(text, str):
                output.texts[index] = [text]
            self._finish_text(output, index, out)
        return out

    def _finish_text(self, output: _Output, index: int, out: list[dict[str, Any]]) -> None:
        if output.texts_done[index] or not output.is_text(index):
            return
        text = "".join(output.texts[index])
        output.texts[index] = [text]
        output.texts_done[index] = True
        ids = {"item_id": output.id, "output_index": output.index, "content_index": index}
        out.append({"type": "response.output_text.done", **ids, "text": text, "logprobs": []})

    def _close_part(self, output: _Output, index: int, out: list[dict[str, Any]], *, part: Any = None) -> None:
        if output.parts_done[index]:
            return
        if isinstance(part, dict):
            output.parts[index] = {**output.parts[index], **part}
            if output.is_text(index) and isinstance(part.get("text"), str) and not output.texts_done[index]:
                output.texts[index] = [part["text"]]
        self._finish_text(output, index, out)
        ids = {"item_id": output.id, "output_index": output.index, "content_index": index}
        out.append({"type": "response.content_part.done", **ids, "part": output.part(index)})
        output.parts_done[index] = True

    def _close_item(self, output: _Output, out: list[dict[str, Any]], status: str) -> None:
        for index in range(len(output.parts)):
            self._close_part(output, index, out)
        output.final = output.snapshot(status)
        out.append({"type": "response.output_item.done", "output_index": output.index, "item": output.final})

    def _item_done(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        item = event.get("item")
        out: list[dict[str, Any]] = []
        if not isinstance(item, dict):
            return out
        output = self._find({"item_id": item.get("id"), "output_index": event.get("output_index")})
        if output is None:
            held = self._held.pop(_key(item.get("id")), []) + self._held.pop(_key(event.get("output_index")), [])
            if held:  # announced now, as the call it is, then its arguments as they came
                shell = {**item, "status": "in_progress", "arguments": ""}
                output = self._new_output(shell, event.get("output_index"), out)
                for argument_event in held:
                    out.extend(self._relay(argument_event))
            else:
                output = self._new_output(item, event.get("output_index"), out)
        if output.final is not None:
            return out
        for index in range(len(output.parts)):
            self._close_part(output, index, out)
        # The upstream's finished item is what gets stored (it is what the next turn replays), under the id
        # the client was told when the item was announced.
        final = {**item, "id": output.id}
        if final.get("type") == "message":
            final.setdefault("status", "completed")  # as for a non-streamed answer (service.items.normalize_output)
        for name, kind, shape in (("content", "message", list), ("arguments", "function_call", str)):
            if final.get("type") == kind and not isinstance(final.get(name), shape):
                final[name] = output.snapshot(str(final.get("status") or "completed"))[name]  # the deltas, not nothing
        output.final = final
        out.append({"type": "response.output_item.done", "output_index": output.index, "item": final})
        return out

    def _relay(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if event["type"] not in OPENAI_EVENT_TYPES:
            return out
        if event["type"] in _ARGUMENT_EVENTS and self._find(event) is None:
            key = event.get("item_id") if isinstance(event.get("item_id"), str) else _key(event.get("output_index"))
            self._held.setdefault(key, []).append(event)
            return out
        relayed = {k: v for k, v in event.items() if k != "sequence_number"}
        for name in _PART_INDEXES:
            if name in relayed and not _part_index(relayed[name]):
                relayed[name] = 0  # as OpenAI's events type it, whatever the upstream sent
        if "output_index" in event or "item_id" in event:
            output = self._output_for(event, out)
            relayed["output_index"] = output.index
            if "item_id" in event:
                relayed["item_id"] = output.id
            kind = event["type"]
            delta = event.get("delta")
            if kind == "response.function_call_arguments.delta" and isinstance(delta, str):
                _keep_piece(output.arguments, delta)
            elif kind == "response.function_call_arguments.done" and isinstance(event.get("arguments"), str):
                output.item["arguments"] = event["arguments"]
                output.arguments = []
                if "name" not in relayed and isinstance(output.item.get("name"), str):
                    relayed["name"] = output.item["name"]  # OpenAI's event names the function
            elif kind == "response.reasoning_summary_text.delta" and isinstance(delta, str):
                _keep_piece(output.summaries.setdefault(relayed.get("summary_index", 0), []), delta)
        out.append(relayed)
        return out

    # -- ending -----------------------------------------------------------------------------------------
    @property
    def all_items_done(self) -> bool:
        return bool(self._outputs) and all(o.final is not None for o in self._outputs)

    def outcome(self) -> tuple[str, dict[str, Any] | None]:
        """(status, error) for the response, from how the stream ended: the upstream's terminal event, an
        in-band error, or (no terminal event) complete only if every announced item finished."""
        if self.error is not None:
            return Status.FAILED, self.error
        if self.final_response is not None:
            # The event's type and the response's status each say how it ended; the worse of the two stands (an
            # upstream's `response.failed` is a failure whatever status its response carries, if any).
            said = (self.final_response.get("status"), _ENDED_BY.get(self.terminal_type or ""))  # any JSON: a tuple
            if Status.FAILED in said:
                error = self.final_response.get("error")
                return Status.FAILED, error if isinstance(error, dict) else dict(UPSTREAM_FAILED_ERROR)
            if Status.INCOMPLETE in said:
                return Status.INCOMPLETE, None
            return Status.COMPLETED, None
        if self.all_items_done:
            return Status.COMPLETED, None
        return Status.FAILED, cut_error("it ended before the response finished")

    def close(self, status: str) -> list[dict[str, Any]]:
        """Done events for every item still open; also announces the upstream's final output items the stream
        did not carry. Arguments held for a call that never finished go: without its done event its name and
        call_id are unknown, and such a call could not be answered."""
        out: list[dict[str, Any]] = []
        for item in self._unstreamed_final_items():
            if item.get("id") not in self._held:
                out.extend(self._item_added({"item": item}))
            out.extend(self._item_done({"item": item}))
        self._held.clear()
        item_status = "completed" if status == Status.COMPLETED else "incomplete"
        for output in self._outputs:
            if output.final is None:
                self._close_item(output, out, item_status)
        return [client_event(event) for event in out]

    def _unstreamed_final_items(self) -> list[dict[str, Any]]:
        """The items of the upstream's final Response that no event announced: all of them when none was, else
        those whose ids the stream never named, as many as the final output holds beyond the streamed items (a
        streamed item whose id the upstream left out got one of ours, so its final copy names another)."""
        final_output = (self.final_response or {}).get("output")
        items = [item for item in final_output if isinstance(item, dict)] if isinstance(final_output, list) else []
        if self._outputs:
            beyond = len(items) - len(self._outputs)
            items = [item for item in items if isinstance(item.get("id"), str) and item["id"] not in self._by_item_id]
            items = items[: max(beyond, 0)]
        # Each announced under an id of its own, which the item's done event then finds it by: one of ours for an
        # id that is missing, unusable or repeated.
        named: set[str] = set()
        unstreamed = []
        for given in items:
            item = given
            if not usable_id(item.get("id")) or item["id"] in named:
                item = {**item, "id": new_id(ID_PREFIX_BY_TYPE.get(str(item.get("type")), "item"))}
            named.add(item["id"])
            unstreamed.append(item)
        return unstreamed

    def result(self, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
        """What the stream amounts to, in the shape of OpenRouter's non-streamed Response, so the turn loop's
        `apply_upstream_result` stores it exactly as it stores a non-streamed answer."""
        final = self.final_response or {}
        return {
            **{k: final.get(k) for k in ("usage", "incomplete_details", "service_tier") if k in final},
            "id": self.upstream_id,
            "model": final.get("model") or self.upstream_model,
            "status": status,
            "error": error,
            "output": [o.final for o in self._outputs if o.final is not None],
        }


_ENDED_BY = {"response.failed": Status.FAILED, "response.incomplete": Status.INCOMPLETE}
_PART_INDEXES = ("content_index", "summary_index")


def _part_index(value: Any) -> bool:
    """Whether an upstream's part index can be relayed and kept by (a summary's pieces are kept by it)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1024


def _key(value: Any) -> Any:
    """A value an upstream sent as an id or index, as a key of held events (a list or an object is none)."""
    return value if isinstance(value, str | int) else None


def _keep_piece(pieces: list[str], piece: str) -> None:
    """Add a delta to the text so far. The pieces are joined every few deltas: a stream holds its text until it
    ends, and each delta kept as its own str costs a str object's overhead on top of its characters."""
    pieces.append(piece)
    if len(pieces) >= _PIECES_KEPT:
        pieces[:] = ["".join(pieces)]


def cut_error(reason: str) -> dict[str, Any]:
    return {"code": STREAM_CUT_ERROR_CODE, "message": f"The upstream stream was cut: {reason}"}


def terminal_event_type(status: str) -> str:
    """OpenAI has no `response.cancelled` event: a cancelled response ends with `response.failed`."""
    if status == Status.COMPLETED:
        return "response.completed"
    if status == Status.INCOMPLETE:
        return "response.incomplete"
    return "response.failed"


def terminal_frame(response: dict[str, Any], sequence_number: int) -> bytes:
    """The frame that ends a stream, carrying the response as stored."""
    event = {"type": terminal_event_type(str(response["status"])), "response": response}
    return sse_frame({**event, "sequence_number": sequence_number})


def opening_events(rendered: dict[str, Any], asked_model: str | None = None) -> list[dict[str, Any]]:
    """The events a stream of this response opened with, as its run sent them (runner._drive): a background
    one was queued first, as its create answer said. They named the model asked for (`asked_model`), before
    the upstream said which one answered."""
    opening = {
        **rendered,
        "model": asked_model or rendered.get("model"),
        "status": Status.IN_PROGRESS,
        "output": [],
        "usage": None,
        "completed_at": None,
        # How it ended: a stream says it only in its terminal event.
        "error": None,
        "incomplete_details": None,
    }
    if not rendered.get("background"):
        return [
            {"type": "response.created", "response": opening},
            {"type": "response.in_progress", "response": opening},
        ]
    queued = {**opening, "status": Status.QUEUED}
    return [
        {"type": "response.created", "response": queued},
        {"type": "response.queued", "response": queued},
        {"type": "response.in_progress", "response": opening},
    ]


def events_from_state(rendered: dict[str, Any], asked_model: str | None = None) -> list[dict[str, Any]]:
    """A stored response's events rebuilt from its final state, for a streamed response whose event log was
    never written (its process died): the opening events, each item added and done, and the terminal event."""
    events = opening_events(rendered, asked_model)
    for index, item in enumerate(rendered.get("output") or []):  # rendered: already in the clients' shapes
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": terminal_event_type(str(rendered.get("status"))), "response": rendered})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events
