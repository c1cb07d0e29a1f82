"""The current request's record: what its log line and metrics report, filled in as the request goes.

A context variable holds it. Tasks started by the request (a streamed or background turn's run) copy the context
when they are created, so they fill in the same record and their log lines carry the same request id."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# What a client may send as X-Request-Id (anything else is replaced by a generated id).
_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Our keys' and OpenRouter's shape: never written to a log line, wherever a client put one (a URL, a request id,
# a model name).
KEY_SHAPE = re.compile(r"sk-(?:cs|or)-[\w-]+")
REDACTED = "[redacted]"


def without_keys(text: str) -> str:
    return KEY_SHAPE.sub("sk-" + REDACTED, text) if "sk-" in text else text


def request_id_from(header: bytes | None) -> str:
    """The client's id when it is well formed, else a new one."""
    if header:
        try:
            candidate = header.decode("ascii")
        except UnicodeDecodeError:
            candidate = ""
        if _WELL_FORMED_ID.fullmatch(candidate) and without_keys(candidate) == candidate:
            return candidate
    return uuid.uuid4().hex


@dataclass
class RequestRecord:
    request_id: str
    conversation_id: str | None = None
    response_id: str | None = None
    error_code: str | None = None
    tenant: str | None = None
    # The upstream call of a turn, when there was one.
    upstream_started: float | None = None
    upstream_status: int | None = None
    upstream_attempts: int = 0
    upstream_latency_ms: float | None = None
    upstream_ttfb_ms: float | None = None
    upstream_error: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    turn_status: str | None = None
    reported: bool = False  # its log line is written: a run that ends later writes a line of its own
    turn_span: Any = None  # the turn's OpenTelemetry span while tracing is on
    turn_context: tuple[Any, Any] | None = None  # (task, token) of the context that made it the current span


_current: ContextVar[RequestRecord | None] = ContextVar("convstore_request", default=None)


def current() -> RequestRecord | None:
    return _current.get()


def current_request_id() -> str | None:
    record = _current.get()
    return record.request_id if record is not None else None


def begin(request_id: str) -> RequestRecord:
    record = RequestRecord(request_id)
    _current.set(record)
    return record


def note_error_code(code: str | None) -> None:
    """The error envelope's code of the answer (conversation_locked, invalid_api_key, ...)."""
    record = _current.get()
    if record is not None:
        record.error_code = code


def note_tenant(name: str | None) -> None:
    record = _current.get()
    if record is not None:
        record.tenant = name


def note_response_id(response_id: str | None) -> None:
    record = _current.get()
    if record is not None and response_id is not None:
        record.response_id = response_id
