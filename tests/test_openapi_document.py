"""The OpenAPI document at /docs/openapi.json: valid OpenAPI 3.1, every route with its request body, answer, query
parameters, error envelope and security scheme, and real answers matching the schemas it documents. /docs works
with no internet: its page names no outside URL and its assets are served by the service.

A new route fails here until it declares its shapes with `operation_class=documented(...)` (see docs/development.md,
"Adding a route")."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from openapi_spec_validator import validate

from service.app import create_app
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.openapi_support import DocumentChecker, ref_name

PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/ready")}
DOCS_PREFIX = "/docs"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def app(server: LiveServer) -> Litestar:
    return create_app(server.settings)


@pytest.fixture
async def document(anonymous: httpx.AsyncClient) -> dict[str, Any]:
    answer = await anonymous.get("/docs/openapi.json")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _handlers(app: Litestar) -> list[tuple[str, str, HTTPRouteHandler]]:
    found = []
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.resolve_include_in_schema():
                continue
            for method in handler.http_methods:
                if method not in {"HEAD", "OPTIONS"}:
                    found.append((method, path, handler))
    return found


async def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema, unresolved $ref included


async def test_every_route_documents_its_answer_errors_and_security(app: Litestar, document: dict[str, Any]) -> None:
    operations = {(method, path): operation for method, path, operation in _operations(document)}
    schemes = document["components"]["securitySchemes"]
    assert {scheme["scheme"] for scheme in schemes.values()} == {"bearer"}
    handlers = _handlers(app)
    assert len(handlers) >= 20
    for method, path, _handler in handlers:
        if path.startswith(DOCS_PREFIX):
            continue
        operation = operations.get((method, path))
        assert operation is not None, f"{method} {path} is not in the document"
        where = f"{method} {path}"
        success = [status for status in operation["responses"] if status.startswith("2")]
        assert success, f"{where} documents no success answer"
        for status in success:
            for content in operation["responses"][status]["content"].values():  # JSON, or SSE / JSON Lines too
                assert ref_name(content["schema"]) in document["components"]["schemas"], where
        errors = {status: answer for status, answer in operation["responses"].items() if status[0] in "45"}
        assert {"500", "503"} <= set(errors), where
        for answer in errors.values():
            assert ref_name(answer["content"]["application/json"]["schema"]) == "ErrorResponse", where
        if (method, path) in PUBLIC_ROUTES:
            assert not operation.get("security"), where
            assert "401" not in errors, where
        else:
            assert operation.get("security"), f"{where} documents no security scheme"
            assert all(set(requirement) <= set(schemes) for requirement in operation["security"]), where
            assert "401" in errors, where
        assert operation.get("operationId"), where


async def test_every_route_reading_a_body_or_query_documents_it(app: Litestar, document: dict[str, Any]) -> None:
    operations = {(method, path): operation for method, path, operation in _operations(document)}
    for method, path, handler in _handlers(app):
        if path.startswith(DOCS_PREFIX):
            continue
        operation = operations[(method, path)]
        names = set(handler.parsed_fn_signature.parameters)
        where = f"{method} {path}"
        if "body" in names:  # a JSON object, decoded by the handler
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert ref_name(schema) in document["components"]["schemas"], where
        elif "requestBody" in operation:  # a body that is not a JSON object (JSON Lines), read from the request
            assert "request" in names, f"{where} documents a body it does not read"
            for content in operation["requestBody"]["content"].values():
                assert ref_name(content["schema"]) in document["components"]["schemas"], where
        documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        read = {
            name
            for name, field in handler.parsed_fn_signature.parameters.items()
            if name not in {"body", "caller", "engine", "runtime", "query", "self"}
            and not re.search(r"\{" + name + r"\}", path)
            and field.kwarg_definition is not None
        }
        assert read <= documented, f"{where} reads undocumented query parameters {read - documented}"
        if "query" in names:  # reads its whole query string: its parameters are declared by a query Struct
            assert documented, f"{where} reads its query string but documents no parameter"


async def test_our_own_strict_bodies_are_documented_as_closed(document: dict[str, Any]) -> None:
    """The routes that refuse a field they do not know (400 unknown_parameter) say so: a client generated from the
    document must not think a misspelt field is taken."""
    for operation_id in (
        "forkConversation",
        "adminCreateApiKey",
        "adminPutRetentionPolicy",
        "adminCreateWebhookEndpoint",
    ):
        (operation,) = [op for _, _, op in _operations(document) if op.get("operationId") == operation_id]
        schema = document["components"]["schemas"][
            ref_name(operation["requestBody"]["content"]["application/json"]["schema"])
        ]
        assert schema.get("additionalProperties") is False, operation_id


async def test_routes_take_what_they_need_as_dependencies() -> None:
    """No route module looks the runtime, the tenant or the body up from the request by hand."""
    service_dir = Path(__file__).parent.parent / "service"
    offenders = [
        str(path.relative_to(service_dir))
        for path in service_dir.rglob("*.py")
        if path.name != "http.py" and re.search(r"\b(runtime_of|principal_of|json_body)\(", path.read_text())
    ]
    assert offenders == [], f"use CallerDep/EngineDep/RuntimeDep (service/http.py) instead in {offenders}"


async def test_no_route_resolves_sibling_dependencies(app: Litestar) -> None:
    """Litestar resolves sibling dependencies in a task group, a task each (service/http.py, Caller): every
    route's dependencies resolve one at a time."""
    for method, path, handler in _handlers(app):
        if path.startswith(DOCS_PREFIX):
            continue
        batches = handler.create_kwargs_model(path_parameters={}).dependency_batches
        assert all(len(batch) == 1 for batch in batches), (
            f"{method} {path}: {[sorted(d.key for d in b) for b in batches]}"
        )


async def test_admin_metadata_filters_are_documented_as_a_parameter_family(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in document["paths"]["/admin/conversations"]["get"]["parameters"]}
    assert {"tenant", "model", "status", "q", "limit", "cursor", "created_after", "updated_before"} <= set(parameters)
    assert parameters["metadata"]["style"] == "deepObject"
    assert parameters["metadata"]["explode"] is True
    assert parameters["status"]["schema"]["enum"]
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}


async def test_real_answers_match_the_documented_schemas(
    document: dict[str, Any],
    alice: Tenant,
    admin: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    fake_upstream: FakeOpenRouter,
) -> None:
    checker = DocumentChecker(document)
    http = alice.http
    checker.check("GET", "/health", await anonymous.get("/health"))
    checker.check("GET", "/ready", await anonymous.get("/ready"))

    created = await http.post(
        "/v1/conversations",
        json={"metadata": {"k": "v"}, "items": [{"type": "message", "role": "user", "content": "hello"}]},
    )
    checker.check("POST", "/v1/conversations", created)
    conv = created.json()["id"]
    checker.check("GET", "/v1/conversations/{conversation_id}", await http.get(f"/v1/conversations/{conv}"))
    checker.check(
        "POST",
        "/v1/conversations/{conversation_id}",
        await http.post(f"/v1/conversations/{conv}", json={"metadata": {"k": "w"}}),
    )
    added = await http.post(
        f"/v1/conversations/{conv}/items",
        json={"items": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "more"}]}]},
    )
    checker.check("POST", "/v1/conversations/{conversation_id}/items", added)
    item_id = added.json()["data"][0]["id"]
    listed = await http.get(f"/v1/conversations/{conv}/items", params={"limit": 1, "order": "asc"})
    checker.check("GET", "/v1/conversations/{conversation_id}/items", listed)
    checker.check(
        "GET",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        await http.get(f"/v1/conversations/{conv}/items/{item_id}"),
    )

    turn = await http.post("/v1/responses", json={"model": "m", "input": "hi", "conversation": conv})
    assert turn.status_code == 200, turn.text
    checker.check("POST", "/v1/responses", turn)
    response_id = turn.json()["id"]
    checker.check("GET", "/v1/responses/{response_id}", await http.get(f"/v1/responses/{response_id}"))
    checker.check(
        "GET", "/v1/responses/{response_id}/input_items", await http.get(f"/v1/responses/{response_id}/input_items")
    )
    checker.check("POST", "/v1/responses/{response_id}/cancel", await http.post(f"/v1/responses/{response_id}/cancel"))
    chained = await http.post("/v1/responses", json={"model": "m", "input": "again"})
    chained_root = (await http.post("/v1/responses", json={"model": "m", "input": "a chain"})).json()["id"]
    checker.check("DELETE", "/v1/responses/{response_id}", await http.delete(f"/v1/responses/{chained.json()['id']}"))
    checker.check(
        "DELETE",
        "/v1/conversations/{conversation_id}/items/{item_id}",
        await http.delete(f"/v1/conversations/{conv}/items/{item_id}"),
    )

    checker.check("GET", "/admin/conversations", await admin.get("/admin/conversations", params={"metadata[k]": "w"}))
    checker.check("GET", "/admin/conversations/{conversation_id}", await admin.get(f"/admin/conversations/{conv}"))
    checker.check("GET", "/admin/responses", await admin.get("/admin/responses", params={"q": "hi"}))
    follow = await http.post("/v1/responses", json={"model": "m", "input": "on", "previous_response_id": chained_root})
    assert follow.status_code == 200, follow.text
    checker.check("GET", "/admin/threads", await admin.get("/admin/threads", params={"kind": "chain"}))
    checker.check("GET", "/admin/threads/{thread_id}", await admin.get(f"/admin/threads/{chained_root}"))
    checker.check("GET", "/admin/threads/{thread_id}", await admin.get(f"/admin/threads/{conv}"))
    checker.check("DELETE", "/admin/threads/{thread_id}", await admin.delete(f"/admin/threads/{chained_root}"))
    checker.check("DELETE", "/admin/threads/{thread_id}", await admin.delete(f"/admin/threads/{chained_root}"))
    checker.check("GET", "/admin/stats", await admin.get("/admin/stats"))
    key = await admin.post("/admin/api-keys", json={"tenant": "carol", "name": "ci"})
    checker.check("POST", "/admin/api-keys", key)
    checker.check("GET", "/admin/api-keys", await admin.get("/admin/api-keys"))
    checker.check("DELETE", "/admin/api-keys/{key_id}", await admin.delete(f"/admin/api-keys/{key.json()['id']}"))
    checker.check(
        "DELETE", "/admin/conversations/{conversation_id}", await admin.delete(f"/admin/conversations/{conv}")
    )
    checker.check("DELETE", "/v1/conversations/{conversation_id}", await http.delete(f"/v1/conversations/{conv}"))

    # Errors: the envelope, at the statuses the routes document.
    checker.check("GET", "/v1/conversations/{conversation_id}", await http.get("/v1/conversations/conv_missing"))
    checker.check("POST", "/v1/responses", await http.post("/v1/responses", json={"model": "m"}))
    checker.check("GET", "/admin/stats", await http.get("/admin/stats"))
    checker.check("GET", "/v1/conversations/{conversation_id}", await anonymous.get(f"/v1/conversations/{conv}"))


async def test_docs_page_works_offline(anonymous: httpx.AsyncClient) -> None:
    page = await anonymous.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    outside = re.findall(r"""(?:src|href)=["'](https?:)?//""", page.text)
    assert outside == [], "the /docs page loads something from outside the service"
    assets = re.findall(r"""(?:src|href)=["'](/docs/assets/[^"']+)["']""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith(".css") for a in assets)
    for asset in assets:
        served = await anonymous.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset


async def test_real_answers_of_the_later_routes_match_the_documented_schemas(
    document: dict[str, Any], alice: Tenant, admin: httpx.AsyncClient
) -> None:
    """Models, token counts, retention, fork: routes added alongside this test, checked the same way."""
    checker = DocumentChecker(document)
    http = alice.http
    checker.check("GET", "/v1/models", await http.get("/v1/models"))
    models = (await http.get("/v1/models")).json()["data"]
    if models:
        checker.check("GET", "/v1/models/{model}", await http.get(f"/v1/models/{models[0]['id']}"))
    checker.check(
        "POST",
        "/v1/responses/input_tokens",
        await http.post("/v1/responses/input_tokens", json={"model": "m", "input": "hello"}),
    )
    conv = (await http.post("/v1/conversations", json={"items": [{"role": "user", "content": "hi"}]})).json()["id"]
    item_id = (await http.get(f"/v1/conversations/{conv}/items")).json()["data"][0]["id"]
    checker.check(
        "POST",
        "/v1/conversations/{conversation_id}/fork",
        await http.post(f"/v1/conversations/{conv}/fork", json={"item_id": item_id}),
    )
    tenant_path = f"/admin/tenants/{alice.name}/retention"
    checker.check("GET", "/admin/tenants/{tenant}/retention", await admin.get(tenant_path))
    checker.check("PUT", "/admin/tenants/{tenant}/retention", await admin.put(tenant_path, json={"responses_days": 30}))
    checker.check("GET", "/admin/tenants/{tenant}/retention/preview", await admin.get(f"{tenant_path}/preview"))
    checker.check("DELETE", "/admin/tenants/{tenant}/retention", await admin.delete(tenant_path))
    checker.check("POST", "/admin/retention/run", await admin.post("/admin/retention/run"))
    checker.check("GET", "/admin/retention", await admin.get("/admin/retention"))
