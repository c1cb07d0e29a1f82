"""A turn's upstream call, fitted to its model's context window.

Between the turn's begin (history read) and its upstream call: look up the model's window (service/context/
catalog.py), count the history (kept sums, service/context/ledger.py) and the new input, and choose what is
sent (service/context/fitting.py). If OpenRouter still answers that the input is too long (providers count
differently), a turn with `truncation: "auto"` drops more and tries again, a bounded number of times. When
the answer's usage comes back, it makes the counts exact for the next turn.

Every call of a thread also carries OpenRouter's `session_id` (the conversation, or the chain's first
response), unless the client set one, so that a thread keeps the provider that holds its prompt cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from service.context import compaction, fitting, pairing, tokens
from service.context.catalog import ModelCatalog, ModelWindow
from service.context.learned import LearnedBudgets
from service.context.ledger import (
    CALL_KEY_FIELDS,
    COMPACTION,
    INSTRUCTION,
    TOOL_OUTPUT,
    TOOL_OUTPUT_TYPES,
    USER_MESSAGE,
    CountedItems,
    TokenLedger,
    exact_counts,
    kind_of,
    kind_of_body,
)
from service.context.sealing import Sealer, Summary
from service.errors import InvalidRequest
from service.items import NewItem
from service.responses.requests import build_upstream_body
from service.upstream.body import UpstreamBody
from service.upstream.client import OpenRouterClient, UpstreamEventStream, generation_id
from service.upstream.errors import UpstreamError, refused_before_upstream

if TYPE_CHECKING:
    from service.responses.turn import Turn

logger = logging.getLogger("service.context")

# Tries of a turn with truncation "auto" that OpenRouter keeps finding too long.
MAX_FIT_ATTEMPTS = 3
# Ours, not OpenRouter's: it has no compaction. (`truncation` goes through: where the service knows no window,
# OpenRouter's own handling of it is all there is.)
_NOT_FORWARDED = frozenset({"context_management"})
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})
_BILLED_EVENTS = _TERMINAL_EVENTS | {"response.failed"}
# The summary call's own instructions and request, in tokens (about).
_SUMMARY_OVERHEAD_TOKENS = 200


@dataclass
class _Plan:
    """What one turn sends: the history as counted, what of it is sent, and how that was decided."""

    params: dict[str, Any]
    history: str  # the history as read, sent as it is when nothing was counted
    inputs: list[NewItem]  # the new input as sent (a compaction item in it rendered)
    counted: CountedItems | None = None  # the history's counts, kept for the thread's next turn
    sent: CountedItems | None = None  # the history as sent before truncation (compaction applied)
    fit: fitting.Fit | None = None
    budget: int = 0
    truncate: bool = False
    input_tokens: int = 0
    exact: bool = True  # the usage report can correct the counts (nothing was rendered in another form)
    compaction: dict[str, Any] | None = None  # a compaction item this turn made: its first output item
    compaction_usage: dict[str, Any] | None = None  # its summary call's usage, added to the turn's
    answered: list[str] = field(default_factory=list)  # the call ids the new input's tool outputs answer

    def body(self, *, stream: bool) -> UpstreamBody:
        if self.sent is None:
            history = self.history
        else:
            history = self.fit.history_text(self.sent) if self.fit is not None else self.sent.text
        return build_upstream_body(self.params, history, self.inputs, stream=stream)


def _bill_summary(turn: Turn, plan: _Plan) -> None:
    """The turn's call failed after its compaction's summary call, which OpenRouter billed: the failed turn
    reports (and its thread's totals add) that usage."""
    if plan.compaction_usage is not None:
        turn.state.usage = compaction.with_summary_usage(turn.state.usage, plan.compaction_usage)


def _holds_compaction(inputs: Sequence[NewItem], history: str) -> bool:
    return any(item.type == "compaction" for item in inputs) or '"compaction"' in history


def _holds_paired_item(history: str, inputs: Sequence[NewItem]) -> bool:
    """Whether the input holds a tool call, which it must answer, or the history may hold one, or a tool output,
    each sent only with the other (CountedItems.calls): every such type's name holds `_call` but MCP
    approvals', which hold `mcp_approval_` (an approval response whose request was deleted is never sent either);
    or a reasoning item, sent only before the item it came with (CountedItems.lone_reasoning). Each search is a
    pass over the history's text."""
    return (
        any(item.type in CALL_KEY_FIELDS for item in inputs)
        or "_call" in history
        or "mcp_approval_" in history
        or '"reasoning"' in history
    )


def _refuse_unanswered_calls(sent: CountedItems, fit: fitting.Fit, inputs: Sequence[NewItem]) -> None:
    """OpenAI's answer to a turn that leaves its thread's latest function calls, or its input's, unanswered;
    OpenRouter's providers mostly refuse such an input too, after the call."""
    call_id = pairing.unanswered_call(sent, fit.start, [(item.type, item.body) for item in inputs])
    if call_id is not None:
        raise refused_before_upstream(f"No tool output found for function call {call_id}.", code=None, param="input")


def refuse_outputs_without_calls(history: str, items: Sequence[NewItem]) -> None:
    """OpenAI's answer to a tool output whose call the context (`history`, its stored JSON texts) does not hold:
    OpenRouter's providers refuse it too, and once stored, every later turn of the thread would send it."""
    if not any(item.type in TOOL_OUTPUT_TYPES for item in items):
        return
    alone = pairing.output_without_call(history, [(item.type, item.body) for item in items])
    if alone is not None:
        kind, call_id = alone
        # OpenAI's words; a custom tool's output is a function call output to them too.
        named = "function call output" if kind == "custom_tool_call_output" else kind.replace("_", " ")
        raise InvalidRequest(f"No tool call found for {named} with call_id {call_id}.", param="input")


def _refuse_repeated_outputs(sent: CountedItems, inputs: Sequence[NewItem]) -> None:
    """A second output for one call: the model would see two results for it on this turn, and every later turn
    (CountedItems.calls) only the first; providers that check the pairing refuse it outright."""
    if not any(item.type in TOOL_OUTPUT_TYPES for item in inputs):
        return
    repeated = pairing.repeated_output(sent.calls.waiting, [(item.type, item.body) for item in inputs])
    if repeated is not None:
        kind, call_id = repeated
        raise refused_before_upstream(
            f"Duplicate {kind} for call_id {call_id}: no call of that id is waiting for an output.",
            code=None,
            param="input",
        )


def _worth_compacting_again(sent: CountedItems) -> bool:
    """Past its threshold, a history compacted before is compacted again only once what a new summary would
    replace since the last one (its items but the user messages, which compaction keeps) costs more than that
    summary. Otherwise a thread whose user messages alone passed the threshold paid a second, whole summary call
    on every turn, for a summary no shorter than the one it replaced."""
    latest = sent.kinds.rfind(bytes([COMPACTION]))
    if latest < 0:
        return True
    since = sum(sent.counts[index] for index in range(latest + 1, len(sent)) if sent.kinds[index] != USER_MESSAGE)
    return since > sent.counts[latest]


def _kept_by_compaction(plan: _Plan) -> int:
    """What a compaction would keep of the history (its user messages, the calls the new input answers), less the
    summary. Without truncation, a turn whose new input with these alone is past its budget is refused whatever
    the summary says: its summary call would be paid for, on every retry, before that refusal."""
    assert plan.sent is not None
    kinds, counts = plan.sent.kinds, plan.sent.counts
    carried = pairing.answered_calls(plan.sent, plan.answered) if plan.answered else []
    return sum(counts[i] for i in range(len(kinds)) if kinds[i] == USER_MESSAGE) + sum(counts[i] for i in carried)


# What a client adds on its turn: the rest came from models (answers, calls, reasoning) or summaries.
_CLIENT_KINDS = frozenset({USER_MESSAGE, TOOL_OUTPUT, INSTRUCTION})


def _input_as_history(inputs: list[NewItem], kinds: list[int] | None) -> tuple[CountedItems, list[NewItem]]:
    """The input split where its new part starts: the items before, counted as a history (a compaction item
    rendered in it keeps its kind, so that it is not summarized again at once), and the rest. The new part is
    what follows the last item a model made: from its last user message on, or in an agent's loop (no user
    message there) its tool outputs, which answer calls of the history as a stored thread's would."""
    if kinds is None:
        kinds = [kind_of_body(item.body) for item in inputs]
    start = len(kinds)
    while start and kinds[start - 1] in _CLIENT_KINDS:
        start -= 1
    last_user = max((index for index, kind in enumerate(kinds) if kind == USER_MESSAGE), default=-1)
    # An input ending with a model's item (a client asking it to go on) keeps its last user message on as new.
    split = last_user if last_user >= start or start == len(kinds) else start
    split = max(split, 0)
    earlier = inputs[:split]
    counted = CountedItems.of([item.body for item in earlier], kinds[:split], [item.token_count for item in earlier])
    return counted, inputs[split:]


def _sent_item(body: str) -> NewItem:
    """An item only sent, never stored (what is read of it: its body and what it costs)."""
    return NewItem(
        id="", type="", role=None, status="", body=body, text_content="", token_count=tokens.body_tokens(body)
    )


class ContextWindows:
    def __init__(
        self, catalog: ModelCatalog, ledger: TokenLedger, sealer: Sealer, *, compaction_model: str | None = None
    ) -> None:
        self.catalog = catalog
        self.ledger = ledger
        self.sealer = sealer
        self.compaction_model = compaction_model
        self.learned = LearnedBudgets()

    async def create(self, upstream: OpenRouterClient, turn: Turn) -> dict[str, Any]:
        """A non-streamed turn's upstream call."""
        plan = await self._plan(upstream, turn)
        for attempt in range(1, MAX_FIT_ATTEMPTS + 1):
            try:
                result = await upstream.create(plan.body(stream=False))
            except UpstreamError as error:
                if not await self._shortened(upstream, plan, turn, error, attempt):
                    _bill_summary(turn, plan)
                    raise
                continue
            self._observe(turn, plan, result.get("usage"))
            if plan.compaction is not None:
                result["output"] = [plan.compaction, *(result.get("output") or [])]
                result["usage"] = compaction.with_summary_usage(result.get("usage"), plan.compaction_usage)
            return result
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open_stream(self, upstream: OpenRouterClient, turn: Turn) -> AsyncIterator[ObservedStream]:
        """A streamed turn's upstream stream; its terminal event's usage corrects the thread's counts. Only
        opening is tried again: once the stream started, its events are the client's."""
        plan = await self._plan(upstream, turn)
        async with AsyncExitStack() as opened:
            for attempt in range(1, MAX_FIT_ATTEMPTS + 1):
                try:
                    stream = await opened.enter_async_context(upstream.open_stream(plan.body(stream=True)))
                    break
                except UpstreamError as error:
                    if not await self._shortened(upstream, plan, turn, error, attempt):
                        _bill_summary(turn, plan)
                        raise
            first = [plan.compaction] if plan.compaction is not None else []
            yield ObservedStream(stream, lambda usage: self._observe(turn, plan, usage), first, plan.compaction_usage)

    async def check_input(self, tenant_id: str, items: list[NewItem]) -> None:
        """Before a turn begins: refuse a forged or altered compaction item in its input."""
        if any(item.type == "compaction" for item in items):
            decoded = [msgspec.json.decode(item.body) if item.type == "compaction" else None for item in items]
            await compaction.check_items(self.sealer, tenant_id, decoded, param="input")

    async def check_items(self, tenant_id: str, items: Any, *, param: str) -> None:
        """Before items are added to a conversation: the same check, on the raw items."""
        await compaction.check_items(self.sealer, tenant_id, items, param=param)

    async def count(
        self,
        tenant_id: str,
        model: str | None,
        params: dict[str, Any],
        *,
        thread: str | None,
        history: str,
        stored: Sequence[int] | None,
        inputs: Sequence[NewItem],
        check_calls: bool,
        compacting: bool = False,
    ) -> int:
        """What a turn with this input would send, in tokens (after truncation, when "auto" truncates); with
        `check_calls`, the turn's refusal of calls it leaves unanswered instead. `stored`: the history items'
        stored token counts, when read with it. No model: no window, so nothing is truncated. `compacting`: the turn
        asks for context_management (a summary is not counted, but the input is split as the turn splits it)."""
        if check_calls:
            refuse_outputs_without_calls(history, inputs)
        counted = self.ledger.counted(thread, history, stored)
        sent, input_bodies, input_kinds = await self._composed(tenant_id, counted, [item.body for item in inputs])
        if check_calls:
            _refuse_repeated_outputs(sent, inputs)
        truncating = model is not None and fitting.truncation_mode(params) == "auto"
        if thread is None and not len(sent) and (truncating or compacting):
            # The whole conversation as input: split as a turn splits it (_plan), then truncated as it would be.
            earlier, rest = _input_as_history([_sent_item(body) for body in input_bodies], input_kinds)
            if len(earlier):
                sent, input_bodies = earlier, [item.body for item in rest]
        answered = pairing.answered_call_ids(input_bodies)
        input_tokens = sum(tokens.body_tokens(body) for body in input_bodies)
        overhead = tokens.request_tokens(params)
        window = None if model is None else await self.catalog.window(model)
        budget = None
        if model is not None and truncating:
            if window is not None:
                fitting.check_answer_room(model, window, params)
            budget = self._budget(model, window, params, truncate=True)
        if model is None or budget is None:
            fitted = fitting.whole(sent, input_tokens, overhead, answered)
        else:
            fitted = fitting.fit(
                sent,
                input_tokens=input_tokens,
                overhead_tokens=overhead,
                budget=budget,
                truncate=True,
                model=model,
                answered=answered,
            )
        if check_calls:
            _refuse_unanswered_calls(sent, fitted, inputs)
        return fitted.total

    async def compact(
        self,
        upstream: OpenRouterClient,
        tenant_id: str,
        model: str,
        *,
        thread: str | None,
        history: str,
        inputs: list[str],
        forwarded: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[str], list[str], dict[str, Any] | None]:
        """POST /v1/responses/compact: a compaction item for this history and input, the user messages it
        keeps, the calls still waiting for their output (to be answered after it), and the summary call's usage
        (`forwarded`: the request's parameters the summary call carries). Raises UpstreamError when the summary
        call fails."""
        counted = self.ledger.counted(thread, history)
        sent, input_bodies, _ = await self._composed(tenant_id, counted, inputs)
        everything = CountedItems.of(
            [*sent.bodies(), *input_bodies],
            [*sent.kinds, *(kind_of(msgspec.json.decode(b)) for b in input_bodies)],
            [*sent.counts, *(tokens.body_tokens(b) for b in input_bodies)],
        )
        summary, usage = await self._summarize(upstream, model, everything, session_id=thread, forwarded=forwarded)
        item = compaction.compaction_item(await self.sealer.seal(tenant_id, summary))
        bodies = everything.bodies()
        kept = [body for body, kind in zip(bodies, everything.kinds, strict=True) if kind == USER_MESSAGE]
        pending = [bodies[index] for index in pairing.pending_calls(everything.kinds, bodies)]
        return item, kept, pending, usage

    async def _composed(
        self, tenant_id: str, counted: CountedItems, inputs: list[str]
    ) -> tuple[CountedItems, list[str], list[int] | None]:
        """The history and input with compaction applied (counts reused), and when anything was rendered, the
        kinds of the input items (a rendered compaction item's is COMPACTION); None otherwise."""
        if COMPACTION not in counted.kinds and not any('"compaction"' in body for body in inputs):
            return counted, inputs, None
        composed = await compaction.compose(self.sealer, tenant_id, counted.bodies(), inputs)
        if not composed.compacted:
            return counted, inputs, None
        counts = [
            counted.counts[source] if source >= 0 else tokens.body_tokens(text)
            for source, text in zip(composed.history_sources, composed.history, strict=True)
        ]
        return CountedItems.of(composed.history, composed.history_kinds, counts), composed.input, composed.input_kinds

    async def _plan(self, upstream: OpenRouterClient, turn: Turn) -> _Plan:
        request = turn.request
        params = {k: v for k, v in request.params.items() if k not in _NOT_FORWARDED}
        history, turn.history = turn.history, ""  # not held by the turn for as long as a stream lasts
        stored, turn.history_counts = turn.history_counts, None
        key = request.conversation_id or request.previous_response_id
        window = await self.catalog.window(request.model)
        threshold = fitting.compaction_threshold(request.params, window)
        plan = _Plan(params, history, list(request.input_items))
        plan.truncate = fitting.truncation_mode(request.params) == "auto"
        counts_needed = window is not None or threshold is not None or plan.truncate or request.compact_first
        # A compaction item, in the input or the history, is rendered whatever the window: OpenRouter has none;
        # a tool output is sent only after its call, and a call must be answered. The history's stored JSON is
        # searched as text, only when nothing else needs it counted (a match inside a string only costs the
        # counting).
        if (
            counts_needed
            or _holds_compaction(request.input_items, history)
            or _holds_paired_item(history, request.input_items)
        ):
            plan.counted = self.ledger.counted(key, history, stored)
        root = plan.counted.root if plan.counted else None
        params.setdefault(
            "session_id", request.conversation_id or root or request.previous_response_id or turn.state.id
        )
        if plan.counted is None:
            return plan
        input_bodies = [item.body for item in request.input_items]
        plan.sent, sent_inputs, input_kinds = await self._composed(turn.tenant_id, plan.counted, input_bodies)
        _refuse_repeated_outputs(plan.sent, request.input_items)
        if input_kinds is not None:
            plan.exact = False
            plan.inputs = [_sent_item(body) for body in sent_inputs]
        compacting = "context_management" in request.params
        if key is None and not len(plan.sent) and (compacting or request.compact_first or plan.truncate):
            # A client that sends the whole conversation each time (store false, or a chain's first turn): what
            # comes before its input's new part (_input_as_history) is the history, compacted or truncated as a
            # stored one is. Otherwise such a conversation never compacted, and once past the window was refused
            # for good.
            earlier, plan.inputs = _input_as_history(plan.inputs, input_kinds)
            if len(earlier):
                plan.sent, plan.exact = earlier, False
        plan.input_tokens = sum(item.token_count for item in plan.inputs)
        if any(item.type in TOOL_OUTPUT_TYPES for item in request.input_items):
            # What the new input answers: an output the split above counted as history answers a call there,
            # sent (or summarized, or cut) with it, not a call to carry or pin without it.
            plan.answered = pairing.answered_call_ids(item.body for item in plan.inputs)
        overhead = tokens.request_tokens(params)
        if window is not None:
            fitting.check_answer_room(request.model, window, request.params)
        # With context_management on, a turn that would not fit compacts whatever its threshold says: a threshold
        # past the input's limit (one the client set, or none known) left such a thread refused on every turn.
        # What fits includes the limit a provider stated when it refused (_compacted_after).
        budget = self._budget(request.model, window, request.params, truncate=plan.truncate or compacting)
        total = plan.sent.total + plan.input_tokens + overhead
        over = compacting and budget is not None and total > budget
        due = (threshold is not None and total > threshold) or over
        # Without truncation, a turn past its budget is refused unless it compacts: a new summary is worth its call
        # then, however few items came since the last one (a summary written for a larger window, read by a
        # smaller model, left such a thread refused on every turn).
        if (
            ((due and _worth_compacting_again(plan.sent)) or (over and not plan.truncate) or request.compact_first)
            and len(plan.sent)
            and (plan.truncate or budget is None or _kept_by_compaction(plan) + plan.input_tokens + overhead <= budget)
        ):
            if key is None:
                # The whole conversation as input: a call it leaves unanswered is refused (below) whatever the
                # summary says, so before a summary call that OpenRouter would bill for a refused turn.
                _refuse_unanswered_calls(CountedItems(), fitting.whole(CountedItems(), 0, 0), request.input_items)
            await self._compact_first(upstream, turn, plan)
        if budget is None:
            # Sent whole; with truncation "auto", OpenRouter's overflow error and the limit it states are the
            # window (_refit, and the budget learned from it), so a model the catalog does not know still gets
            # shortened rather than stuck.
            plan.fit = fitting.whole(plan.sent, plan.input_tokens, overhead, plan.answered)
        try:
            if budget is not None:
                plan.budget = budget
                try:
                    self._fit(plan, request.model)
                except UpstreamError:
                    if not self._guessed(request.model, window, request.params, plan, overhead):
                        raise
                    # The budget was learned from refusals (a guess, or the limit a request that asked for more
                    # room for its answer was given), not stated by the catalog: the new input goes alone, with
                    # the calls it answers, and the provider says whether it fits. Refused here, every turn of
                    # the model with a larger input was, before any call that could raise the budget again.
                    plan.fit = fitting.least(plan.sent, plan.input_tokens, overhead, plan.answered)
            assert plan.fit is not None
            _refuse_unanswered_calls(plan.sent, plan.fit, request.input_items)
        except (UpstreamError, InvalidRequest):
            # Refused after a summary call, which OpenRouter billed (still too long, or a call left unanswered):
            # the refused turn reports it.
            _bill_summary(turn, plan)
            raise
        return plan

    def _budget(self, model: str, window: ModelWindow | None, params: dict[str, Any], *, truncate: bool) -> int | None:
        """The input budget: the window's, or with truncation "auto" a lower one learned from the provider's
        refusals (service/context/learned.py); None when neither is known."""
        budget = None if window is None else fitting.input_budget(window, params)
        learned = self.learned.get(model) if truncate else None
        if learned is None:
            return budget
        return learned if budget is None else min(budget, learned)

    def _guessed(
        self, model: str, window: ModelWindow | None, params: dict[str, Any], plan: _Plan, overhead: int
    ) -> bool:
        """Whether a truncated turn's budget is one learned from refusals below what the catalog states, which
        the new input (and its overhead) would fit."""
        learned = self.learned.get(model) if plan.truncate else None
        if learned is None:
            return False
        stated = None if window is None else fitting.input_budget(window, params)
        return stated is None or (learned < stated and plan.input_tokens + overhead <= stated)

    async def _compact_first(self, upstream: OpenRouterClient, turn: Turn, plan: _Plan) -> None:
        """context_management: the input crossed the threshold, so the history is compacted before the model
        is called. What is sent then: the history's user messages, the summary, the new input. If the summary
        call fails, the turn goes on uncompacted (then truncation, or context_length_exceeded, as usual).

        The summary covers the new input too: the compaction item is stored after it (an output of this turn), so
        later turns leave out whatever of it is not a user message, a tool output answering a call included."""
        assert plan.sent is not None
        model = self.compaction_model or turn.request.model
        summarized = CountedItems.of(
            [*plan.sent.bodies(), *(item.body for item in plan.inputs)],
            [*plan.sent.kinds, *(kind_of_body(item.body) for item in plan.inputs)],
            [*plan.sent.counts, *(item.token_count for item in plan.inputs)],
        )
        try:
            summary, plan.compaction_usage = await self._summarize(
                upstream, model, summarized, session_id=plan.params.get("session_id")
            )
        except UpstreamError as error:
            logger.warning("turn %s: compaction failed, going on uncompacted: %s", turn.state.id, error.message)
            return
        plan.compaction = compaction.compaction_item(await self.sealer.seal(turn.tenant_id, summary))
        rendered = compaction.render(summary)
        bodies = plan.sent.bodies()
        users = [index for index, kind in enumerate(plan.sent.kinds) if kind == USER_MESSAGE]
        # The calls the new input answers stay, after the summary: their outputs would go upstream alone.
        carried = pairing.answered_calls(plan.sent, plan.answered) if plan.answered else []
        plan.sent = CountedItems.of(
            [*(bodies[i] for i in users), rendered, *(bodies[i] for i in carried)],
            [*(USER_MESSAGE for _ in users), COMPACTION, *(plan.sent.kinds[i] for i in carried)],
            [
                *(plan.sent.counts[i] for i in users),
                tokens.body_tokens(rendered),
                *(plan.sent.counts[i] for i in carried),
            ],
        )
        plan.exact = False
        logger.info("turn %s: compacted %s before calling the model", turn.state.id, turn.request.model)

    async def _summarize(
        self,
        upstream: OpenRouterClient,
        model: str,
        items: CountedItems,
        *,
        session_id: Any,
        forwarded: dict[str, Any] | None = None,
    ) -> tuple[Summary, dict[str, Any] | None]:
        """The summary call, its input cut (oldest first) to the summarizing model's window when known, without
        the tool calls or outputs that lack their other half (a pending call is sent as it is after the summary,
        service/context/compaction.py), and the others as text (compaction.as_summary_text)."""
        bodies = items.bodies()
        alone = pairing.unpaired(items.kinds, bodies)
        keep = [i for i in range(len(items)) if i not in alone]
        texts = [compaction.as_summary_text(bodies[i], items.kinds[i]) for i in keep]
        # A text read as a message (a call or a reasoning item as an assistant's, an output as a user's) is of that
        # kind now: nothing in it pairs any more. The others, which as_summary_text returns as they are, keep
        # theirs (an earlier summary stays a compaction item, which a cut never drops).
        kinds = [
            items.kinds[i] if text is bodies[i] else kind_of_body(text) for i, text in zip(keep, texts, strict=True)
        ]
        items = CountedItems.of(texts, kinds, [items.counts[i] for i in keep])
        window, attempt = await self.catalog.window(model), 1
        while True:
            budget = self._budget(model, window, {}, truncate=True)  # a refusal's limit too
            if budget is None:
                fitted = fitting.whole(items, 0, _SUMMARY_OVERHEAD_TOKENS)
            else:
                fitted = fitting.fit(
                    items,
                    input_tokens=0,
                    overhead_tokens=_SUMMARY_OVERHEAD_TOKENS,
                    budget=budget,
                    truncate=True,
                    model=model,
                )
            history = fitted.history_text(items)
            try:
                return await compaction.summarize(
                    upstream,
                    model,
                    history,
                    session_id=session_id if isinstance(session_id, str) else None,
                    forwarded=forwarded,
                )
            except UpstreamError as error:
                # The provider counts more than the estimate, or takes less than the catalog says: the limit it
                # stated is learned and the call made shorter. Otherwise every later turn of a thread that
                # compacts without truncation failed the same summary call, and then its own.
                if not error.context_overflow or attempt == MAX_FIT_ATTEMPTS or fitted.start >= len(items):
                    raise
                self.learned.lower(model, fitting.shrunk_budget(fitted, error, again=attempt > 1))
                logger.warning("the summary call to %s was too long; shortening it", model)
            attempt += 1

    def _fit(self, plan: _Plan, model: str) -> None:
        assert plan.sent is not None
        plan.fit = fitting.fit(
            plan.sent,
            input_tokens=plan.input_tokens,
            overhead_tokens=tokens.request_tokens(plan.params),
            budget=plan.budget,
            truncate=plan.truncate,
            model=model,
            answered=plan.answered,
        )
        if plan.fit.start:
            logger.info(
                "truncated %s: %d of %d history items sent (%d tokens estimated, budget %d)",
                model,
                len(plan.sent) - plan.fit.start,
                len(plan.sent),
                plan.fit.total,
                plan.budget,
            )

    async def _shortened(
        self, upstream: OpenRouterClient, plan: _Plan, turn: Turn, error: UpstreamError, attempt: int
    ) -> bool:
        """After OpenRouter found the input too long: True when the input was shortened (truncated further, or
        compacted) and is worth another try."""
        return self._refit(plan, turn, error, attempt) or await self._compacted_after(
            upstream, plan, turn, error, attempt
        )

    async def _compacted_after(
        self, upstream: OpenRouterClient, plan: _Plan, turn: Turn, error: UpstreamError, attempt: int
    ) -> bool:
        """context_management on, truncation off, and the provider counted more than the estimate: the turn
        compacts now, once, and is tried again. Without this, such a turn was refused, and so was every retry of
        it, as a refused turn adds nothing to the thread. The limit the provider stated is learned, so that the
        thread's next turns compact before it."""
        request = turn.request
        if (
            not error.context_overflow
            or plan.truncate
            or "context_management" not in request.params
            or plan.compaction is not None
            or plan.sent is None
            or plan.fit is None
            or attempt == MAX_FIT_ATTEMPTS
            or not len(plan.sent)
            or not _worth_compacting_again(plan.sent)
            or fitting.answer_room_past_window(error)
        ):
            return False
        self.learned.lower(request.model, fitting.shrunk_budget(plan.fit, error))
        await self._compact_first(upstream, turn, plan)
        if plan.compaction is None:
            return False  # the summary call failed: the refusal stands
        logger.warning("OpenRouter found turn %s too long; compacted it", turn.state.id)
        if not plan.budget:
            plan.fit = fitting.whole(plan.sent, plan.input_tokens, plan.fit.overhead_tokens, plan.answered)
            return True
        try:
            self._fit(plan, request.model)
        except UpstreamError:
            return False
        return True

    def _refit(self, plan: _Plan, turn: Turn, error: UpstreamError, attempt: int) -> bool:
        """After OpenRouter found the input too long: True when a shorter input is worth another try. The last
        try sends only the new input and what must go with it (so does an earlier one when the shrunk budget
        leaves the new input no room): with truncation "auto" a thread far past a window that neither the
        catalog nor the provider's refusal states answers, rather than failing turn after turn while the
        remembered budget comes down to the window."""
        if not error.context_overflow or not plan.truncate or plan.fit is None:
            return False
        if fitting.answer_room_past_window(error):
            # max_output_tokens alone is past the window: no shorter input helps, and the budget this refusal
            # would teach (every other thread of the model starts from it) would be a guess far below the window.
            return False
        assert plan.sent is not None
        if plan.fit.start >= len(plan.sent):
            return False  # nothing of the history is sent already: the new input alone is too long
        # Refused again: in this turn, or on this model since its budget was learned.
        again = attempt > 1 or self.learned.get(turn.request.model) is not None
        plan.budget = fitting.shrunk_budget(plan.fit, error, again=again)
        # Learned on the last try too: the thread's next turn starts from it, not from its whole history.
        self.learned.lower(turn.request.model, plan.budget)
        if attempt == MAX_FIT_ATTEMPTS:
            return False
        if attempt + 1 < MAX_FIT_ATTEMPTS:
            logger.warning("OpenRouter found turn %s too long; fitting it to %d tokens", turn.state.id, plan.budget)
            try:
                self._fit(plan, turn.request.model)
                return True
            except UpstreamError:
                pass  # the new input alone is past the shrunk budget, an estimate: it may still fit the window
        plan.fit = fitting.least(plan.sent, plan.input_tokens, plan.fit.overhead_tokens, plan.answered)
        logger.warning("OpenRouter found turn %s too long; sending only its new input", turn.state.id)
        return True

    def _observe(self, turn: Turn, plan: _Plan, usage: Any) -> None:
        """The turn got its answer: keep the thread's counts, its input included, for the next turn, and what
        its model took as a floor of the budget learned for it."""
        request = turn.request
        if plan.fit is not None:
            self.learned.taken(request.model, plan.fit.total)
        if plan.counted is None or not request.store:
            return
        counts = [item.token_count for item in request.input_items]
        reported = usage.get("input_tokens") if isinstance(usage, dict) else None
        if isinstance(reported, int) and plan.fit is not None and plan.exact:
            # What the model counted, less what the history sent and the instructions and tools cost.
            exact = exact_counts(counts, reported - plan.fit.overhead_tokens - plan.fit.history_tokens)
            if exact is not None:
                turn.input_counts = counts = exact
        entry = plan.counted.with_input([item.body for item in request.input_items], counts)
        entry.root = request.conversation_id or plan.counted.root or request.previous_response_id or turn.state.id
        self.ledger.keep(request.conversation_id or turn.state.id, entry)


class ObservedStream:
    """An upstream stream whose terminal event is shown to `on_usage` before the runner sees it, and which
    starts with the items the service put first in the output (a compaction item), announced and done; the
    terminal event's usage then includes the compaction's summary call (`extra_usage`)."""

    def __init__(
        self,
        stream: UpstreamEventStream,
        on_usage: Any,
        first: list[dict[str, Any]],
        extra_usage: dict[str, Any] | None = None,
    ) -> None:
        self.response = stream.response
        self._stream = stream
        self._on_usage = on_usage
        self._first = first
        self._extra_usage = extra_usage
        self._generation = generation_id(stream.response)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        for item in self._first:
            # No output_index: the upstream's own indexes (from 0) must not find this item.
            yield {"type": "response.output_item.added", "item": item}
            yield {"type": "response.output_item.done", "item": item}
        async for event in self._stream.events():
            response = event.get("response")
            if not isinstance(response, dict):
                yield event
                continue
            if event.get("type") in _TERMINAL_EVENTS:
                self._on_usage(response.get("usage"))
            if self._extra_usage is not None and event.get("type") in _BILLED_EVENTS:
                response = {
                    **response,
                    "usage": compaction.with_summary_usage(response.get("usage"), self._extra_usage),
                }
            # The upstream id the turn keeps: OpenRouter's generation id, as for a non-streamed turn.
            yield {**event, "response": response if self._generation is None else {**response, "id": self._generation}}
