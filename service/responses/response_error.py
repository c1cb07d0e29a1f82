"""A failed response's `error` as clients read it: OpenAI's ResponseError, a `code` from its ResponseErrorCode
list and a `message`. What is stored stays as it came (an upstream's own code, even a number, is what an
operator looks for); typed clients decode the code as that list's enum, so one outside it is shown as the
nearest of its values, the message unchanged."""

from __future__ import annotations

from typing import Any

# ResponseErrorCode in OpenAI's spec.
OPENAI_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
# Codes (ours and OpenRouter's) and HTTP statuses that say the request itself could not be answered.
_PROMPT_CODES = frozenset(
    {
        "context_length_exceeded",
        "conversation_too_large",
        "invalid_request_error",
        "invalid_request",
        "bad_request",
        "content_filter",
        "moderation",
        "invalid_encrypted_content",
        "400",
        "413",
        "422",
    }
)
_RATE_CODES = frozenset({"rate_limit", "rate_limited", "too_many_requests", "429"})
_NO_MESSAGE = "The response failed"


def shown_error(error: Any) -> dict[str, str] | None:
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    return {"code": openai_code(error.get("code")), "message": message if isinstance(message, str) else _NO_MESSAGE}


def openai_code(code: Any) -> str:
    if isinstance(code, bool) or not isinstance(code, str | int):
        return "server_error"
    text = str(code).strip().lower()
    if text in OPENAI_CODES:
        return text
    if text in _RATE_CODES:
        return "rate_limit_exceeded"
    if text in _PROMPT_CODES:
        return "invalid_prompt"
    return "server_error"
