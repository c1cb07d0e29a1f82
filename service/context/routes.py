"""/v1/models (OpenRouter's catalog in OpenAI's shape) and POST /v1/responses/input_tokens."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath

from service.context.counting import count_input_tokens
from service.errors import NotFound
from service.http import json_body, json_response, principal_of, require_tenant_key, runtime_of


def _model_view(entry: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's Model object; the window fields are ours (OpenRouter's names), so clients can plan for them."""
    model_id = str(entry["id"])
    created = entry.get("created")
    top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
    return {
        "id": model_id,
        "object": "model",
        "created": created if isinstance(created, int) else 0,
        "owned_by": model_id.split("/", 1)[0] if "/" in model_id else "openrouter",
        "context_length": entry.get("context_length"),
        "max_completion_tokens": top.get("max_completion_tokens") if isinstance(top, dict) else None,
    }


class ModelController(Controller):
    path = "/v1/models"
    before_request = staticmethod(require_tenant_key)
    tags = ["models"]  # noqa: RUF012

    @get("/", operation_id="listModels")
    async def list_models(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        entries = await runtime_of(request).turn_context.windows.catalog.models()
        return json_response({"object": "list", "data": [_model_view(e) for e in entries]})

    @get("/{model:path}", operation_id="retrieveModel")
    async def retrieve(self, request: Request[Any, Any, Any], model: FromPath[str]) -> Response[bytes]:
        model_id = model.lstrip("/")
        entry = await runtime_of(request).turn_context.windows.catalog.model(model_id)
        if entry is None:
            raise NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return json_response(_model_view(entry))


class InputTokensController(Controller):
    path = "/v1/responses/input_tokens"
    before_request = staticmethod(require_tenant_key)
    tags = ["responses"]  # noqa: RUF012

    @post("/", operation_id="getInputTokenCounts", status_code=200)
    async def count(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        runtime = runtime_of(request)
        result = await count_input_tokens(
            runtime.engine,
            runtime.turn_context.windows,
            principal_of(request).tenant_id,
            await json_body(request),
            max_input_items=runtime.settings.max_input_items,
        )
        return json_response(result)
