"""What the upstream client reports about its calls: attempts, status, time to first byte or event, latency and
errors by kind. Each call fills the current request's record (service.observability.record); the turn's end
turns them into metrics (service.observability.turns)."""

from __future__ import annotations

import logging
import time

from service.observability import metrics
from service.observability.record import current

logger = logging.getLogger("service.upstream")
# Upstream statuses that say the service's OpenRouter account, not the request, is at fault.
_REFUSED_ACCOUNT = {
    401: "key: check OPENROUTER_API_KEY",
    402: "account for lack of credits: top it up, or lower max_output_tokens",
}
# A refused account fails every turn: said once a minute per status (with how many calls since), not per call.
_WARN_EVERY_SECONDS = 60.0
_warned_at: dict[int, float] = {}
_unsaid: dict[int, int] = {}


def call_started() -> None:
    record = current()
    if record is not None:
        record.upstream_started = time.perf_counter()
        record.upstream_attempts = 0


def attempt_started() -> None:
    record = current()
    if record is not None:
        record.upstream_attempts += 1


def answered(status: int) -> None:
    """The response's head arrived (its body may follow, or stream)."""
    record = current()
    if record is not None:
        record.upstream_status = status
        if record.upstream_started is not None and record.upstream_ttfb_ms is None and status < 400:
            record.upstream_ttfb_ms = round((time.perf_counter() - record.upstream_started) * 1000, 2)


def first_event() -> None:
    """A stream's first event: the time to first token, which replaces the time to the response's head."""
    record = current()
    if record is not None and record.upstream_started is not None:
        record.upstream_ttfb_ms = round((time.perf_counter() - record.upstream_started) * 1000, 2)


def retried() -> None:
    metrics.UPSTREAM_RETRIES.inc()


def failed(kind: str, status: int | None) -> None:
    metrics.UPSTREAM_ERRORS.labels(kind, "none" if status is None else str(status)).inc()
    if status in _REFUSED_ACCOUNT:
        _warn_refused_account(status)
    record = current()
    if record is not None:
        record.upstream_error = kind
        if status is not None:
            record.upstream_status = status


def _warn_refused_account(status: int) -> None:
    """Every turn fails until an operator acts, and the clients see only 502s (a 401) or 402s: said where alerts
    look."""
    now = time.monotonic()
    last = _warned_at.get(status)
    if last is not None and now - last < _WARN_EVERY_SECONDS:
        _unsaid[status] = _unsaid.get(status, 0) + 1
        return
    _warned_at[status] = now
    since = _unsaid.pop(status, 0)
    more = f"; {since} more such calls since the last warning" if since else ""
    logger.warning("OpenRouter refused the service's %s (HTTP %d)%s", _REFUSED_ACCOUNT[status], status, more)


def call_ended() -> None:
    record = current()
    if record is not None and record.upstream_started is not None:
        record.upstream_latency_ms = round((time.perf_counter() - record.upstream_started) * 1000, 2)
