"""/v1/models (OpenRouter's catalog in OpenAI's shape), POST /v1/responses/input_tokens and /compact."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath, RawBody

from service.context.catalog import ModelCatalog
from service.context.compacting import compact_thread
from service.context.counting import count_input_tokens
from service.context.schemas import (
    CompactResource,
    CompactResponseMethodPublicBody,
    ListModelsResponse,
    Model,
    TokenCountsBody,
    TokenCountsResource,
)
from service.errors import NotFound, ServiceError
from service.http import CallerDep, json_response, require_tenant_key
from service.jsonbody import decode_object
from service.openapi import TENANT_AUTH, documented


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


def _refuse_unread(catalog: ModelCatalog) -> None:
    """An empty list, or a model said not to exist, would send a client (or its operator) looking for the wrong
    fault when the catalog could not be read at all (OpenRouter down, a wrong key)."""
    if not catalog.ever_read:
        raise ServiceError(
            "OpenRouter's model catalog could not be read; try again shortly", status_code=502, code="upstream_error"
        )


class ModelController(Controller):
    path = "/v1/models"
    before_request = staticmethod(require_tenant_key)
    tags = ["models"]  # noqa: RUF012
    security = TENANT_AUTH

    @get("/", operation_id="listModels", operation_class=documented(answer=ListModelsResponse, errors=(502,)))
    async def list_models(self, caller: CallerDep) -> Response[bytes]:
        catalog = caller.runtime.turn_context.windows.catalog
        entries = await catalog.models()
        _refuse_unread(catalog)
        return json_response({"object": "list", "data": [_model_view(e) for e in entries]})

    @get("/{model:path}", operation_id="retrieveModel", operation_class=documented(answer=Model, errors=(404, 502)))
    async def retrieve(self, caller: CallerDep, model: FromPath[str]) -> Response[bytes]:
        model_id = model.lstrip("/")
        catalog = caller.runtime.turn_context.windows.catalog
        entry = await catalog.model(model_id)
        if entry is None:
            _refuse_unread(catalog)
            raise NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return json_response(_model_view(entry))


class InputTokensController(Controller):
    path = "/v1/responses/input_tokens"
    before_request = staticmethod(require_tenant_key)
    tags = ["responses"]  # noqa: RUF012
    security = TENANT_AUTH

    @post(
        "/",
        operation_id="getInputTokenCounts",
        status_code=200,
        operation_class=documented(body=TokenCountsBody, answer=TokenCountsResource, errors=(400, 404, 502)),
    )
    async def count(self, caller: CallerDep, body: RawBody) -> Response[bytes]:
        runtime = caller.runtime
        result = await count_input_tokens(
            runtime.engine,
            runtime.turn_context.windows,
            caller.tenant_id,
            decode_object(body),
            max_input_items=runtime.settings.max_input_items,
        )
        return json_response(result)


class CompactController(Controller):
    path = "/v1/responses/compact"
    before_request = staticmethod(require_tenant_key)
    tags = ["responses"]  # noqa: RUF012
    security = TENANT_AUTH

    @post(
        "/",
        operation_id="compactConversation",
        status_code=200,
        operation_class=documented(
            body=CompactResponseMethodPublicBody, answer=CompactResource, errors=(400, 404, 409, 429, 502, 504)
        ),
    )
    async def compact(self, caller: CallerDep, body: RawBody) -> Response[bytes]:
        runtime = caller.runtime
        result = await compact_thread(
            runtime.turn_context,
            caller.tenant_id,
            decode_object(body),
            max_input_items=runtime.settings.max_input_items,
        )
        return json_response(result)
