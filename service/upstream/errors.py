"""Upstream failures and how they reach our clients: OpenRouter's {error:{code,message,metadata}} becomes
OpenAI's envelope; 4xx keep their status, 5xx and connection failures become 502, timeouts 504."""

from __future__ import annotations

import math
import re
from typing import Any

from service.errors import ServiceError
from service.upstream.redaction import redact

# A longer Retry-After from OpenRouter is passed on to our client as this many seconds.
MAX_RETRY_AFTER_SECONDS = 86400.0
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 524, 529})

_CODE_BY_STATUS = {
    400: "upstream_bad_request",
    401: "upstream_authentication_failed",
    402: "insufficient_credits",
    403: "upstream_forbidden",
    404: "upstream_not_found",
    413: "upstream_payload_too_large",
    422: "upstream_unprocessable",
    429: "rate_limit_exceeded",
}


class UpstreamError(ServiceError):
    """kind: "http" (an error status), "connect", "timeout", "protocol" (an unreadable answer),
    "stream" (cut or failed after it started)."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        upstream_status: int | None = None,
        upstream_code: Any = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        status, code = _client_status_and_code(kind, upstream_status, upstream_code)
        headers: dict[str, str] | None = None
        if retry_after and status == 429:
            headers = {"Retry-After": str(max(1, round(retry_after)))}
        elif status >= 500 and _retried_or_final(kind, upstream_status):
            # The service has already tried OpenRouter as often as UPSTREAM_MAX_ATTEMPTS allows (a timeout waited
            # its whole bound, and a refused key stays refused): OpenAI's SDKs retry a 5xx twice more unless told
            # not to, which multiplied the upstream calls and the wait for the same failure.
            headers = {"x-should-retry": "false"}
        super().__init__(message, status_code=status, code=code, headers=headers, param=param)
        self.kind = kind
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code
        self.retry_after = retry_after

    @property
    def context_overflow(self) -> bool:
        return self.code == CONTEXT_LENGTH_EXCEEDED

    @property
    def retryable(self) -> bool:
        if self.kind == "connect":
            return True
        return self.kind == "http" and self.upstream_status in RETRYABLE_STATUSES

    def response_error(self) -> dict[str, Any]:
        """The `error` object stored on the failed Response (OpenAI's ResponseError shape)."""
        if self.upstream_status == 429:
            code = "rate_limit_exceeded"
        elif self.upstream_status in {400, 413, 422}:
            code = "invalid_prompt"
        else:
            code = "server_error"
        return {"code": code, "message": self.message}


def _retried_or_final(kind: str, upstream_status: int | None) -> bool:
    """Whether the service's own tries are spent on this failure, or another try cannot help. What it tried once
    (an upstream 5xx it does not retry, such as a gateway's 504; an answer it could not read) stays the client's
    to retry."""
    if kind in {"connect", "timeout"}:
        return True
    return kind == "http" and (upstream_status in RETRYABLE_STATUSES or upstream_status == 401)


def _client_status_and_code(kind: str, status: int | None, upstream_code: Any) -> tuple[int, str]:
    if kind == "timeout" or status == 408:
        return 504, "upstream_timeout"
    if kind == "connect":
        return 502, "upstream_unavailable"
    if kind in {"protocol", "stream"} or status is None:
        return 502, "upstream_error"
    if status >= 500:
        return 502, "upstream_error"
    if status == 401:
        # OpenRouter refused the service's own key (the client's never goes upstream): a 401 would tell the
        # client, and its SDK's AuthenticationError, that its key is wrong.
        return 502, "upstream_authentication_failed"
    if isinstance(upstream_code, str) and upstream_code:
        return status, upstream_code
    return status, _CODE_BY_STATUS.get(status, "upstream_error")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:  # "inf", "nan" or a negative wait are no advice
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# How OpenRouter's providers word a prompt longer than the model's window when no `error_type` says so.
_OVERFLOW_WORDINGS = re.compile(
    r"maximum context length|context length (?:exceeded|is exceeded)|context_length_exceeded|context window"
    r"|prompt is too long|input is too long|too many (?:input )?tokens|exceeds? the (?:model's )?(?:maximum )?context"
    r"|exceeds the maximum number of tokens|maximum prompt length|exceeds? context limit|available context size"
    r"|`inputs` tokens \+ `max_new_tokens` must be",
    re.IGNORECASE,
)


def refused_before_upstream(message: str, *, code: str | None, param: str) -> UpstreamError:
    """A turn refused for what it would send, found before the model is called (from stored items too): raised
    as OpenRouter's own 400 would be, so that a plain, a streamed and a background turn answer it, and store it
    on the response, alike. `code` None: none, as OpenAI gives none for some of its refusals."""
    refused = UpstreamError(message, kind="http", upstream_status=400, upstream_code=code, param=param)
    if code is None:
        refused.code = None
    return refused


def context_length_exceeded(message: str) -> UpstreamError:
    """OpenAI's answer to an input longer than the model's window, whether OpenRouter or we found it."""
    return refused_before_upstream(message, code=CONTEXT_LENGTH_EXCEEDED, param="input")


def _is_context_overflow(status: int, body: dict[str, Any], error: dict[str, Any]) -> bool:
    metadata = error.get("metadata")
    error_types = {body.get("error_type"), metadata.get("error_type") if isinstance(metadata, dict) else None}
    if CONTEXT_LENGTH_EXCEEDED in error_types or error.get("code") == CONTEXT_LENGTH_EXCEEDED:
        return True
    message = error.get("message")
    return status in {400, 413, 422} and isinstance(message, str) and bool(_OVERFLOW_WORDINGS.search(message))


def from_error_body(status: int, body: Any, retry_after: float | None, *, secret: str | None = None) -> UpstreamError:
    message = f"OpenRouter answered HTTP {status}"
    code: Any = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code")
        if isinstance(code, str):
            code = redact(code, secret)
        if isinstance(error.get("message"), str) and error["message"]:
            message = f"OpenRouter: {redact(error['message'], secret)}"
        if _is_context_overflow(status if status >= 400 else 400, body, error):
            return context_length_exceeded(f"Context length exceeded. {message}")
    elif isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        message = f"OpenRouter: {redact(body['error'], secret)[:1000]}"
    if status < 400:
        # An error body under a success status: OpenRouter's numeric code is the status it meant.
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    return UpstreamError(message, kind="http", upstream_status=status, upstream_code=code, retry_after=retry_after)
