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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.context import fitting, tokens
from service.context.catalog import ModelCatalog
from service.context.ledger import CountedItems, TokenLedger
from service.responses.requests import build_upstream_body
from service.upstream.client import OpenRouterClient, UpstreamEventStream
from service.upstream.errors import UpstreamError

if TYPE_CHECKING:
    from service.responses.turn import Turn

logger = logging.getLogger("service.context")

# Tries of a turn with truncation "auto" that OpenRouter keeps finding too long.
MAX_FIT_ATTEMPTS = 3
# Ours, not OpenRouter's: it has no compaction. (`truncation` goes through: where the service knows no window,
# OpenRouter's own handling of it is all there is.)
_NOT_FORWARDED = frozenset({"context_management"})
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


@dataclass
class _Plan:
    """What one turn sends: the counted history, the part of it kept, and how it was decided."""

    params: dict[str, Any]
    counted: CountedItems | None  # None: the model's window is unknown, the history goes as it is
    history: str
    fit: fitting.Fit | None = None
    budget: int = 0
    truncate: bool = False
    input_tokens: int = 0

    def body(self, turn: Turn, *, stream: bool) -> bytes:
        history = self.history if self.counted is None or self.fit is None else self.counted.text_from(self.fit.start)
        return build_upstream_body(self.params, history, turn.request.input_items, stream=stream)


class ContextWindows:
    def __init__(self, catalog: ModelCatalog, ledger: TokenLedger) -> None:
        self.catalog = catalog
        self.ledger = ledger

    async def create(self, upstream: OpenRouterClient, turn: Turn) -> dict[str, Any]:
        """A non-streamed turn's upstream call."""
        plan = await self._plan(turn)
        for attempt in range(1, MAX_FIT_ATTEMPTS + 1):
            try:
                result = await upstream.create(plan.body(turn, stream=False))
            except UpstreamError as error:
                if not self._refit(plan, turn, error, attempt):
                    raise
                continue
            self._observe(turn, plan, result.get("usage"))
            return result
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open_stream(self, upstream: OpenRouterClient, turn: Turn) -> AsyncIterator[ObservedStream]:
        """A streamed turn's upstream stream; its terminal event's usage corrects the thread's counts. Only
        opening is tried again: once the stream started, its events are the client's."""
        plan = await self._plan(turn)
        async with AsyncExitStack() as opened:
            for attempt in range(1, MAX_FIT_ATTEMPTS + 1):
                try:
                    stream = await opened.enter_async_context(upstream.open_stream(plan.body(turn, stream=True)))
                    break
                except UpstreamError as error:
                    if not self._refit(plan, turn, error, attempt):
                        raise
            yield ObservedStream(stream, lambda usage: self._observe(turn, plan, usage))

    async def count(
        self, model: str, params: dict[str, Any], thread: str | None, history: str, input_bodies: list[str]
    ) -> int:
        """What a turn with this input would send, in tokens (after truncation, when "auto" truncates)."""
        counted = self.ledger.counted(thread, history)
        input_tokens = sum(tokens.body_tokens(body) for body in input_bodies)
        overhead = tokens.request_tokens(params)
        window = await self.catalog.window(model)
        if window is None or fitting.truncation_mode(params) != "auto":
            return counted.total + input_tokens + overhead
        budget = fitting.input_budget(window, params)
        fitted = fitting.fit(
            counted, input_tokens=input_tokens, overhead_tokens=overhead, budget=budget, truncate=True, model=model
        )
        return fitted.total

    async def _plan(self, turn: Turn) -> _Plan:
        request = turn.request
        params = {k: v for k, v in request.params.items() if k not in _NOT_FORWARDED}
        history, turn.history = turn.history, ""  # not held by the turn for as long as a stream lasts
        key = request.conversation_id or request.previous_response_id
        window = await self.catalog.window(request.model)
        counted = self.ledger.counted(key, history) if window is not None else None
        session = request.conversation_id or (counted.root if counted else None) or request.previous_response_id
        params.setdefault("session_id", session or turn.state.id)
        plan = _Plan(params, counted, history)
        if window is None or counted is None:
            return plan
        plan.truncate = fitting.truncation_mode(request.params) == "auto"
        plan.budget = fitting.input_budget(window, request.params)
        plan.input_tokens = sum(tokens.body_tokens(item.body) for item in request.input_items)
        self._fit(plan, request.model)
        return plan

    def _fit(self, plan: _Plan, model: str) -> None:
        assert plan.counted is not None
        plan.fit = fitting.fit(
            plan.counted,
            input_tokens=plan.input_tokens,
            overhead_tokens=tokens.request_tokens(plan.params),
            budget=plan.budget,
            truncate=plan.truncate,
            model=model,
        )
        if plan.fit.start:
            logger.info(
                "truncated %s: %d of %d history items sent (%d tokens estimated, budget %d)",
                model,
                len(plan.counted) - plan.fit.start,
                len(plan.counted),
                plan.fit.total,
                plan.budget,
            )

    def _refit(self, plan: _Plan, turn: Turn, error: UpstreamError, attempt: int) -> bool:
        """After OpenRouter found the input too long: True when a shorter input is worth another try."""
        if not error.context_overflow or not plan.truncate or plan.fit is None or attempt == MAX_FIT_ATTEMPTS:
            return False
        assert plan.counted is not None
        if plan.fit.start >= len(plan.counted):
            return False  # nothing of the history is sent already: the new input alone is too long
        plan.budget = fitting.shrunk_budget(plan.fit, error)
        logger.warning("OpenRouter found turn %s too long; fitting it to %d tokens", turn.state.id, plan.budget)
        try:
            self._fit(plan, turn.request.model)
        except UpstreamError:
            return False
        return True

    def _observe(self, turn: Turn, plan: _Plan, usage: Any) -> None:
        """The turn got its answer: keep the thread's counts, its input included, for the next turn."""
        request = turn.request
        if plan.counted is None or not request.store:
            return
        entry = plan.counted.with_input([item.body for item in request.input_items])
        entry.root = request.conversation_id or plan.counted.root or request.previous_response_id or turn.state.id
        reported = usage.get("input_tokens") if isinstance(usage, dict) else None
        if isinstance(reported, int) and plan.fit is not None:
            entry.correct(plan.fit.start, reported - plan.fit.overhead_tokens)
        self.ledger.keep(request.conversation_id or turn.state.id, entry)


class ObservedStream:
    """An upstream stream whose terminal event is shown to `on_usage` before the runner sees it."""

    def __init__(self, stream: UpstreamEventStream, on_usage: Any) -> None:
        self.response = stream.response
        self._stream = stream
        self._on_usage = on_usage

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._stream.events():
            if event.get("type") in _TERMINAL_EVENTS and isinstance(event.get("response"), dict):
                self._on_usage(event["response"].get("usage"))
            yield event
