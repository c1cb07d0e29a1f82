"""The turn path's hooks (one line each where they are called): a turn requested, begun, and finished, and the
streamed/background runs in flight. They fill the request's record (its log line), count the turn's metrics
and, with tracing on, open and close the turn's span with OpenTelemetry's GenAI attributes."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.observability import metrics, tracing
from service.observability.record import RequestRecord, current, without_keys

if TYPE_CHECKING:
    from service.responses.requests import TurnRequest
    from service.responses.turn import Turn

logger = logging.getLogger("service.turns")

PROVIDER = "openrouter"


def turn_requested(request: TurnRequest) -> None:
    """Before the turn's first statement, so that its database spans are the turn span's children."""
    record = current()
    if record is None:
        return
    record.conversation_id = request.conversation_id
    record.model = request.model
    tracer = tracing.tracer()
    if tracer is None:
        return
    # A model name is the client's text: a key pasted into it is redacted as in the log lines.
    model = without_keys(request.model)
    span = tracer.start_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
            # The client's text too, not yet found (a 404 ends this span as well).
            **({"gen_ai.conversation.id": without_keys(request.conversation_id)} if request.conversation_id else {}),
        },
    )
    record.turn_span = span
    # A run's task copies this context when it starts, so its spans are the turn's children too.
    record.turn_context = (asyncio.current_task(), otel_context.attach(trace.set_span_in_context(span)))


def _whole(value: Any) -> int:
    # A counter cannot go down: a negative count raises (the stored usage has none: responses/usage.py).
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return _whole(details.get(name)) if isinstance(details, dict) else 0


def turns_failed_for_their_process(count: int) -> None:
    """Turns another process ran, failed here because it stopped or its claims expired: they end in no process's
    turn_finished, and a failure-rate alert would otherwise read zero through a crash."""
    if count:
        metrics.TURNS.labels("failed").inc(count)


def turn_ended(status: str) -> None:
    """A turn's outcome, counted once it is stored as this process ran it (or at once, for store=false): one
    taken over meanwhile is counted by the turn or process that took it over."""
    metrics.TURNS.labels(status).inc()


def turn_finished(turn: Turn) -> None:
    """What a turn used and how it went (tokens, cost, its log line and span), whether or not its outcome is then
    stored as it ran: the upstream charged for it either way."""
    state = turn.state
    record = current()
    usage = state.usage if isinstance(state.usage, dict) else {}
    input_tokens, output_tokens = _whole(usage.get("input_tokens")), _whole(usage.get("output_tokens"))
    model = state.upstream_model or state.model
    counts = [
        (kind, count)
        for kind, count in (
            ("input", input_tokens),
            ("output", output_tokens),
            ("cached", _detail(usage, "input_tokens_details", "cached_tokens")),
            ("reasoning", _detail(usage, "output_tokens_details", "reasoning_tokens")),
        )
        if count
    ]
    cost = usage.get("cost")
    billed = float(cost) if isinstance(cost, int | float | Decimal) and not isinstance(cost, bool) and cost > 0 else 0.0
    if counts or billed:
        # Only a turn the upstream reported usage for takes one of the model label's values: a model name no
        # upstream knows (a 400, no usage) would otherwise take one too, and a client sending a few hundred such
        # names had every tenant's usage counted as "other" until the process restarted.
        tenant = metrics.tenant_label(record.tenant if record is not None else None)
        model_label = metrics.model_label(model)
        for kind, count in counts:
            metrics.TOKENS.labels(kind, model_label, tenant).inc(count)
        if billed:
            metrics.COST.labels(model_label, tenant).inc(billed)
    if record is None:
        return
    record.response_id = state.id
    record.turn_status = state.status
    record.model = model
    record.input_tokens, record.output_tokens = input_tokens, output_tokens
    if record.upstream_latency_ms is not None:
        metrics.UPSTREAM_DURATION.observe(record.upstream_latency_ms / 1000)
    if record.upstream_ttfb_ms is not None:
        metrics.UPSTREAM_TTFT.observe(record.upstream_ttfb_ms / 1000)
    _end_span(record, turn)
    if record.reported:
        # The request that started this run has already been answered and logged (a background turn).
        logger.info("turn %s %s", state.id, state.status, extra={"fields": turn_fields(record)})


def turn_fields(record: RequestRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in (
        "tenant",
        "conversation_id",
        "response_id",
        "turn_status",
        "model",
        "upstream_status",
        "upstream_latency_ms",
        "upstream_ttfb_ms",
        "upstream_attempts",
        "upstream_error",
        "input_tokens",
        "output_tokens",
    ):
        value = getattr(record, name)
        if value is not None and (name != "upstream_attempts" or value):
            fields[name] = value
    return fields


def _end_span(record: RequestRecord, turn: Turn) -> None:
    span = record.turn_span
    if span is None:
        return
    record.turn_span = None
    _detach(record)
    state = turn.state
    span.set_attribute("gen_ai.response.id", state.id)
    if state.upstream_model:
        span.set_attribute("gen_ai.response.model", without_keys(state.upstream_model))
    if record.input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", record.input_tokens)
    if record.output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", record.output_tokens)
    span.set_attribute("convstore.response.status", state.status)
    if state.status == "failed":  # Status.FAILED (service/responses imports this module, not the reverse)
        code = state.error.get("code") if isinstance(state.error, dict) else None
        error_type = without_keys(str(code or "failed"))  # an upstream's code is its text
        span.set_status(Status(StatusCode.ERROR, error_type))
        span.set_attribute("error.type", error_type)
    span.end()


def _detach(record: RequestRecord) -> None:
    """Back to the request's span, in the task that attached the turn's (a run's task ends with its turn)."""
    if record.turn_context is not None:
        task, token = record.turn_context
        record.turn_context = None
        if task is asyncio.current_task():
            otel_context.detach(token)


def request_ended(record: RequestRecord) -> None:
    """A turn that was requested but never began (refused: locked, not found, ...) ends its span here."""
    span = record.turn_span
    if span is not None and record.response_id is None:
        record.turn_span = None
        _detach(record)
        span.set_status(Status(StatusCode.ERROR, record.error_code or "refused"))
        span.set_attribute("error.type", record.error_code or "refused")
        span.end()


def run_started(turn: Turn) -> None:
    metrics.RUNS_IN_FLIGHT.labels("background" if turn.request.background else "stream").inc()
    record = current()
    if record is not None:
        record.response_id = turn.state.id


def run_ended(request: TurnRequest) -> None:
    metrics.RUNS_IN_FLIGHT.labels("background" if request.background else "stream").dec()
