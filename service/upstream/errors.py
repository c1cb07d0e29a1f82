"""Upstream failures and how they reach our clients: OpenRouter's {error:{code,message,metadata}} becomes
OpenAI's envelope; 4xx keep their status, 5xx and connection failures become 502, timeouts 504."""

from __future__ import annotations

from typing import Any

from service.errors import ServiceError

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
    ) -> None:
        status, code = _client_status_and_code(kind, upstream_status, upstream_code)
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after and status == 429 else None
        super().__init__(message, status_code=status, code=code, headers=headers)
        self.kind = kind
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code
        self.retry_after = retry_after

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


def _client_status_and_code(kind: str, status: int | None, upstream_code: Any) -> tuple[int, str]:
    if kind == "timeout" or status == 408:
        return 504, "upstream_timeout"
    if kind == "connect":
        return 502, "upstream_unavailable"
    if kind in {"protocol", "stream"} or status is None:
        return 502, "upstream_error"
    if status >= 500:
        return 502, "upstream_error"
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
    return seconds if seconds >= 0 else None


def redact(text: str, secret: str | None) -> str:
    """An upstream message may quote our OpenRouter key back (a key error, a proxy); it must not reach a client,
    a stored response or a log."""
    return text.replace(secret, "[redacted]") if secret else text


def redact_all(value: Any, secret: str) -> Any:
    """`redact` through a decoded JSON value."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {key: redact_all(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_all(item, secret) for item in value]
    return value


def from_error_body(status: int, body: Any, retry_after: float | None, *, secret: str | None = None) -> UpstreamError:
    message = f"OpenRouter answered HTTP {status}"
    code: Any = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code")
        if isinstance(error.get("message"), str) and error["message"]:
            message = f"OpenRouter: {redact(error['message'], secret)}"
    if status < 400:
        # An error body under a success status: OpenRouter's numeric code is the status it meant.
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    return UpstreamError(message, kind="http", upstream_status=status, upstream_code=code, retry_after=retry_after)
