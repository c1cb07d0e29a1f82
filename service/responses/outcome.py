"""Folding the upstream's answer into the response we store: status, usage, error and output items."""

from __future__ import annotations

from typing import Any

from service.items import NewItem, normalize_output
from service.responses.status import TERMINAL, Status
from service.responses.usage import sane_usage
from service.responses.views import ResponseState


def jsonb_safe(value: Any) -> Any:
    """jsonb and text columns cannot hold U+0000; errors, usage and ids come from the upstream and might."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {jsonb_safe(k): jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonb_safe(v) for v in value]
    return value


UPSTREAM_FAILED_ERROR = {"code": "server_error", "message": "The upstream reported the response as failed"}


def apply_upstream_result(state: ResponseState, result: dict[str, Any]) -> list[NewItem]:
    """Fold OpenRouter's final Response into our state; returns the output items to store."""
    status = result.get("status")
    state.status = status if status in TERMINAL else Status.COMPLETED.value
    state.upstream_model = jsonb_safe(result.get("model")) if isinstance(result.get("model"), str) else None
    tier = result.get("service_tier")
    state.service_tier = tier if isinstance(tier, str) and 0 < len(tier) <= 64 and "\x00" not in tier else None
    state.usage = sane_usage(jsonb_safe(result["usage"])) if isinstance(result.get("usage"), dict) else None
    error = result.get("error")
    # OpenAI's Response carries an error exactly when it failed.
    if state.status == Status.FAILED:
        state.error = jsonb_safe(error) if isinstance(error, dict) else dict(UPSTREAM_FAILED_ERROR)
    else:
        state.error = None
    details = result.get("incomplete_details")
    state.incomplete_details = jsonb_safe(details) if isinstance(details, dict) else None
    outputs = normalize_output(result.get("output"), response_status=state.status)
    state.output = [(item.id, item.status, item.body) for item in outputs]
    return outputs


def upstream_id_of(result: dict[str, Any]) -> str | None:
    upstream_id = result.get("id")
    return jsonb_safe(upstream_id) if isinstance(upstream_id, str) else None
