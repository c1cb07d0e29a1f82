"""Prometheus metrics (prometheus-client). Names and units follow Prometheus' conventions (`_seconds`, `_total`,
base units); docs/operations.md lists them.

With several uvicorn workers the CLI sets PROMETHEUS_MULTIPROC_DIR before the workers start, so each worker
writes its values to files there and a scrape of any worker (or of METRICS_PORT, served by the parent process)
adds them up. Gauges say how they combine across workers (`livesum`: the live processes' sum)."""

from __future__ import annotations

import os
import threading

from prometheus_client import REGISTRY as _DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Prometheus' text format; litestar adds `; charset=utf-8` to a text/ type (written here too, it came twice).
CONTENT_TYPE = "text/plain; version=0.0.4"

# Latency buckets from a fast read (~1 ms) to a long generation (minutes).
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 900)

HTTP_REQUESTS = Counter(
    "convstore_http_requests", "HTTP requests answered, by route template and status", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "convstore_http_request_duration_seconds",
    "Time from the request's arrival to its last byte (a stream: its whole length)",
    ["method", "route"],
    buckets=_REQUEST_BUCKETS,
)
TURNS = Counter("convstore_turns", "Turns that ended, by outcome (the stored response's status)", ["outcome"])
UPSTREAM_DURATION = Histogram(
    "convstore_upstream_request_duration_seconds",
    "One turn's upstream call, retries included, until the answer was complete",
    buckets=_UPSTREAM_BUCKETS,
)
UPSTREAM_TTFT = Histogram(
    "convstore_upstream_time_to_first_token_seconds",
    "Until the upstream's first byte (a non-streamed answer) or first event (a stream)",
    buckets=_UPSTREAM_BUCKETS,
)
UPSTREAM_RETRIES = Counter("convstore_upstream_retries", "Upstream attempts that were retried")
UPSTREAM_ERRORS = Counter(
    "convstore_upstream_errors",
    "Upstream calls that failed, by kind (connect, timeout, http, protocol, stream) and the error answer's HTTP "
    "status (none: the call failed without one)",
    ["kind", "status"],
)
TOKENS = Counter(
    "convstore_tokens", "Tokens reported by the upstream, by type, model and tenant", ["type", "model", "tenant"]
)
COST = Counter("convstore_cost_usd", "Cost reported by the upstream, in US dollars", ["model", "tenant"])
CONVERSATION_LOCKED = Counter(
    "convstore_conversation_locked", "Requests refused with 409 conversation_locked (a turn was running)"
)
IDEMPOTENT_REPLAYS = Counter("convstore_idempotent_replays", "Requests answered by replaying a stored answer")
DB_POOL_IN_USE = Gauge(
    "convstore_db_pool_connections_in_use", "Database connections checked out of the pool", multiprocess_mode="livesum"
)
DB_POOL_WAITS = Counter("convstore_db_pool_waits", "Turn statements that had to wait for a free database connection")
DB_POOL_WAITING = Gauge(
    "convstore_db_pool_waiting", "Turn statements waiting for a database connection now", multiprocess_mode="livesum"
)
RETENTION_DELETED = Counter(
    "convstore_retention_deleted", "Rows the retention purge deleted (kind: conversations, responses, items)", ["kind"]
)
RETENTION_RUNS = Counter(
    "convstore_retention_runs",
    "Retention runs this process made (outcome: ok, lease_lost, the error's name)",
    ["outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "convstore_webhook_attempts", "Webhook delivery attempts (outcome: delivered, retrying, failed)", ["outcome"]
)
RUNS_IN_FLIGHT = Gauge(
    "convstore_runs_in_flight",
    "Streamed and background turns running now (kind: stream, background)",
    ["kind"],
    multiprocess_mode="livesum",
)

# The label values known in advance, given a series at start: an alert on a rate of failures reads 0, not no
# data, until the first one.
_KNOWN_LABELS: tuple[tuple[Counter | Gauge, tuple[tuple[str, ...], ...]], ...] = (
    (TURNS, (("completed",), ("incomplete",), ("failed",), ("cancelled",))),
    (RUNS_IN_FLIGHT, (("stream",), ("background",))),
    (RETENTION_RUNS, (("ok",), ("lease_lost",))),
    (RETENTION_DELETED, (("conversations",), ("responses",), ("items",))),
    (WEBHOOK_ATTEMPTS, (("delivered",), ("retrying",), ("failed",))),
    # The failures without a status, and the statuses an operator acts on: OpenRouter refused the key (401),
    # the credits ran out (402), its rate limit (429), its own errors (5xx).
    (
        UPSTREAM_ERRORS,
        (
            *(("connect", "none"), ("timeout", "none"), ("protocol", "none"), ("stream", "none")),
            *(("http", status) for status in ("401", "402", "429", "500", "502", "503")),
        ),
    ),
)


def start_series() -> None:
    """Called by each serving process once its metrics are set up (multiprocess mode included)."""
    for metric, label_sets in _KNOWN_LABELS:
        for values in label_sets:
            metric.labels(*values)


# Tenants and models come from users: past this many distinct values per label, the rest are counted as "other"
# so that a flood of model names cannot grow the series without bound.
MAX_LABEL_VALUES = 200
OTHER = "other"


class BoundedLabel:
    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


model_label = BoundedLabel()
tenant_label = BoundedLabel()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def forget_process(pid: int) -> None:
    """A worker that died: its live gauges (livesum, livemax) no longer count (prometheus_client's own call)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: every worker's files in multiprocess mode, else this process' metrics."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return _DEFAULT_REGISTRY


def exposition() -> bytes:
    return generate_latest(scrape_registry())
