"""Request ids, Prometheus metrics and OpenTelemetry traces, through the HTTP API of a running service."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response

ADMIN = {"Authorization": "Bearer admin-test-secret"}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(exposition: str, name: str, **labels: str) -> float:
    return samples(exposition).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(server: LiveServer) -> str:
    async with httpx.AsyncClient(base_url=server.url) as client:
        answer = await client.get("/metrics", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


# -- request ids ------------------------------------------------------------------------------------------


async def test_a_well_formed_request_id_is_returned_as_sent(alice: Tenant) -> None:
    sent = "client-req_42:a.b-c"
    answer = await alice.http.post("/v1/conversations", json={}, headers={"X-Request-Id": sent})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == sent


async def test_a_malformed_or_missing_request_id_is_replaced_by_a_generated_one(alice: Tenant) -> None:
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        answer = await alice.http.get("/v1/conversations/conv_missing", headers={"X-Request-Id": bad})
        assert answer.status_code == 404
        generated = answer.headers["x-request-id"]
        assert generated != bad
        assert 1 <= len(generated) <= 128 and generated.isalnum()
    first = (await alice.http.post("/v1/conversations", json={})).headers["x-request-id"]
    second = (await alice.http.post("/v1/conversations", json={})).headers["x-request-id"]
    assert first != second


async def test_errors_before_routing_and_auth_carry_a_request_id(anonymous: httpx.AsyncClient) -> None:
    unauthenticated = await anonymous.post("/v1/responses", json={"model": "m", "input": "hi"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-request-id"]
    unknown = await anonymous.get("/no/such/route", headers={"X-Request-Id": "abc"})
    assert unknown.status_code == 404
    assert unknown.headers["x-request-id"] == "abc"
    assert unknown.json()["error"]["code"] == "not_found"


# -- metrics ----------------------------------------------------------------------------------------------


async def test_metrics_need_the_admin_credential(
    server: LiveServer, anonymous: httpx.AsyncClient, alice: Tenant
) -> None:
    missing = await anonymous.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    tenant = await alice.http.get("/metrics")
    assert tenant.status_code == 403
    assert tenant.json()["error"]["type"] == "permission_error"
    assert "convstore_http_requests_total" in await scrape(server)


async def test_requests_and_turns_are_counted_with_tokens_and_cost_by_model_and_tenant(
    server: LiveServer, alice: Tenant
) -> None:
    before = await scrape(server)
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    for words in ("one", "two"):
        answer = await alice.http.post(
            "/v1/responses", json={"model": "openai/gpt-4o-mini", "input": words, "conversation": conversation}
        )
        assert answer.status_code == 200
    assert (await alice.http.get("/v1/responses/resp_nope")).status_code == 404
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "POST", "route": "/v1/responses"}
    assert grew("convstore_http_requests_total", **route, status="200") == 2
    assert grew("convstore_http_request_duration_seconds_count", **route) == 2
    assert grew("convstore_http_requests_total", method="GET", route="/v1/responses/{response_id}", status="404")
    assert grew("convstore_turns_total", outcome="completed") == 2
    # The fake upstream reports 10 input and 5 output tokens and $0.00042 per turn.
    labels = {"model": "openai/gpt-4o-mini", "tenant": "alice"}
    assert grew("convstore_tokens_total", type="input", **labels) == 20
    assert grew("convstore_tokens_total", type="output", **labels) == 10
    assert abs(grew("convstore_cost_usd_total", **labels) - 0.00084) < 1e-9
    assert grew("convstore_upstream_request_duration_seconds_count") == 2
    assert grew("convstore_upstream_time_to_first_token_seconds_count") == 2


async def test_locked_conversations_replays_retries_and_upstream_errors_are_counted(
    server: LiveServer, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    before = await scrape(server)
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    fake_upstream.enqueue(Reply(kind="json", body=text_response("slow"), delay=1.0))
    turn = {"model": "openai/gpt-4o-mini", "input": "hi", "conversation": conversation}
    slow = asyncio.create_task(alice.http.post("/v1/responses", json=turn))
    await asyncio.sleep(0.4)
    locked = await alice.http.post("/v1/responses", json=turn)
    assert locked.status_code == 409
    assert locked.json()["error"]["code"] == "conversation_locked"
    assert (await slow).status_code == 200

    for _ in range(2):
        replay = await alice.http.post("/v1/conversations", json={}, headers={"Idempotency-Key": "k-1"})
    assert replay.headers["idempotent-replayed"] == "true"

    # One 503 then success: a retry. Then three 502s (every attempt): a failed turn and an upstream error.
    error = {"error": {"message": "down", "code": 503}}
    fake_upstream.enqueue(Reply(kind="json", status=503, body=error))
    assert (await alice.http.post("/v1/responses", json={"model": "m", "input": "x"})).status_code == 200
    bad = {"error": {"message": "bad gateway", "code": 502}}
    fake_upstream.enqueue(*[Reply(kind="json", status=502, body=bad) for _ in range(3)])
    assert (await alice.http.post("/v1/responses", json={"model": "m", "input": "x"})).status_code == 502
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("convstore_conversation_locked_total") == 1
    assert grew("convstore_idempotent_replays_total") == 1
    assert grew("convstore_upstream_retries_total") == 1 + 2
    assert grew("convstore_upstream_errors_total", kind="http", status="502") == 1
    assert grew("convstore_turns_total", outcome="failed") == 1


async def test_streams_in_flight_and_the_pool_are_reported(
    server: LiveServer, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    events = [
        {"type": "response.created", "response": text_response("")},
        {"type": "response.completed", "response": text_response("done")},
    ]
    fake_upstream.enqueue(Reply(kind="sse", events=events, delay=1.0))
    async with alice.http.stream(
        "POST", "/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "hi", "stream": True}
    ) as stream:
        assert stream.status_code == 200
        during = await scrape(server)
        assert value(during, "convstore_runs_in_flight", kind="stream") >= 1
        assert value(during, "convstore_db_pool_connections_in_use") >= 0
        async for _ in stream.aiter_bytes():
            pass
    await asyncio.sleep(0.2)  # the run stores its outcome after the last frame
    after = await scrape(server)
    assert (
        value(after, "convstore_runs_in_flight", kind="stream")
        == value(during, "convstore_runs_in_flight", kind="stream") - 1
    )
    # Nothing of the turn runs any more: every connection comes back (the scrape itself uses none). The server's
    # own background work (its heartbeat, the sweeps) may hold one for a moment, so the count is read until it is 0:
    # a connection the turn kept would stay.
    for _ in range(40):
        if value(after, "convstore_db_pool_connections_in_use") == 0:
            break
        await asyncio.sleep(0.05)
        after = await scrape(server)
    assert value(after, "convstore_db_pool_connections_in_use") == 0
    assert "convstore_db_pool_waits_total" in after


async def test_model_and_tenant_labels_are_bounded() -> None:
    from service.observability.metrics import OTHER, BoundedLabel

    label = BoundedLabel(limit=3)
    assert [label(f"m{i}") for i in range(5)] == ["m0", "m1", "m2", OTHER, OTHER]
    assert label("m1") == "m1"
    assert label(None) == "none"


async def test_model_names_the_upstream_refused_take_no_label_values(
    server: LiveServer, make_tenant: Any, fake_upstream: FakeOpenRouter
) -> None:
    """Each finished turn took one of the model label's values (MAX_LABEL_VALUES a process), refused or not: a
    client sending that many made-up model names, each a 400 with no usage, had every tenant's tokens and cost
    counted as model="other" from then on."""
    from service.observability.metrics import MAX_LABEL_VALUES

    flood = await make_tenant("modelflood")
    for n in range(MAX_LABEL_VALUES + 5):
        fake_upstream.reply_json({"error": {"code": 400, "message": f"junk/m{n} is not a valid model ID"}}, status=400)
        refused = await flood.http.post("/v1/responses", json={"model": f"junk/m{n}", "input": "hi", "store": False})
        assert refused.status_code == 400, refused.text
    answered = await flood.http.post("/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "hi"})
    assert answered.status_code == 200, answered.text
    exposition = await scrape(server)
    labels = {"model": "openai/gpt-4o-mini", "tenant": "modelflood"}
    assert value(exposition, "convstore_tokens_total", type="input", **labels) == 10
    assert value(exposition, "convstore_tokens_total", type="input", model="other", tenant="modelflood") == 0


async def test_unreadable_upstream_answers_are_counted_as_upstream_errors_and_answer_502(
    server: LiveServer, alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Found after the retries (the answer arrived, it is just not one), so counted apart from them."""
    before = await scrape(server)
    fake_upstream.enqueue(
        Reply(kind="json", body=b"not json{"),
        Reply(kind="json", body=["a", "list"]),
        # An error body under 200: OpenRouter's numeric code is the status it meant.
        Reply(kind="json", body={"error": {"message": "provider failed", "code": 500}}),
    )
    for message in ("not JSON", "not a JSON object", "OpenRouter: provider failed"):
        answer = await alice.http.post("/v1/responses", json={"model": "m", "input": "x"})
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["code"] == "upstream_error" and error["type"] == "server_error"
        assert message in error["message"]
    after = await scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("convstore_upstream_errors_total", kind="protocol", status="none") == 2
    assert grew("convstore_upstream_errors_total", kind="http", status="500") == 1
    assert grew("convstore_turns_total", outcome="failed") == 3


# -- traces -----------------------------------------------------------------------------------------------


def _by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def _traced_server(settings: Any) -> tuple[InMemorySpanExporter, LiveServer]:
    """The service with tracing on, its finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, LiveServer(settings, tracer_provider=provider).start()


async def test_a_turn_is_traced_with_genai_attributes_database_and_upstream_children(
    base_settings: Any,
    fake_upstream: FakeOpenRouter,
    make_tenant: Callable[..., Awaitable[Tenant]],
) -> None:
    exporter, live = _traced_server(base_settings)
    try:
        alice = await make_tenant("alice", live=live)
        conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
        exporter.clear()
        answer = await alice.http.post(
            "/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "hi", "conversation": conversation}
        )
        assert answer.status_code == 200
        response = answer.json()
        await asyncio.sleep(0.2)  # the server span ends after the last byte is sent
    finally:
        live.stop()
    spans = exporter.get_finished_spans()
    (turn,) = _by_name(spans, "chat ")
    assert turn.attributes is not None
    assert turn.attributes["gen_ai.operation.name"] == "chat"
    assert turn.attributes["gen_ai.provider.name"] == "openrouter"
    assert turn.attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert turn.attributes["gen_ai.response.id"] == response["id"]
    assert turn.attributes["gen_ai.response.model"] == "openai/gpt-4o-mini"
    assert turn.attributes["gen_ai.conversation.id"] == conversation
    assert turn.attributes["gen_ai.usage.input_tokens"] == 10
    assert turn.attributes["gen_ai.usage.output_tokens"] == 5

    servers = [s for s in spans if s.kind.name == "SERVER" and s.context.trace_id == turn.context.trace_id]
    assert len(servers) == 1 and "/v1/responses" in servers[0].name
    assert turn.parent is not None and turn.parent.span_id == servers[0].context.span_id
    children = [s for s in spans if s.parent is not None and s.parent.span_id == turn.context.span_id]
    database = [s for s in children if (s.attributes or {}).get("db.system") == "postgresql"]
    assert database, [s.name for s in children]
    (upstream,) = [s for s in children if (s.attributes or {}).get("http.method") == "POST"]
    assert (upstream.attributes or {})["http.url"].endswith("/responses")
    # The trace context went to OpenRouter with the upstream call.
    (sent,) = fake_upstream.requests
    trace_id = f"{turn.context.trace_id:032x}"
    assert sent.headers["traceparent"].split("-")[1] == trace_id
    assert sent.headers["traceparent"].split("-")[2] == f"{upstream.context.span_id:016x}"


async def test_spans_are_named_by_route_and_show_no_key_a_client_put_in_the_url(
    base_settings: Any, make_tenant: Callable[..., Awaitable[Tenant]], fake_upstream: FakeOpenRouter
) -> None:
    """Server spans were named from the raw path (one name per conversation) and their URL attributes held the
    query string: a key sent in a path or a query (the client's, ADMIN_API_KEY, the OpenRouter key) reached the
    trace collector."""
    # A heartbeat every 0.1 s: its statements, and every other background one, were root spans of their own.
    exporter, live = _traced_server(dataclasses.replace(base_settings, process_heartbeat_timeout=0.4))
    admin_key, openrouter_key = base_settings.admin_api_key, base_settings.openrouter_api_key
    try:
        alice = await make_tenant("alice", live=live)
        conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
        exporter.clear()
        # The process's first turn reads the model catalog, in the background: that read is not traced either.
        turn = {"model": "openai/gpt-4o-mini", "input": "hi", "conversation": conversation}
        assert (await alice.http.post("/v1/responses", json=turn)).status_code == 200
        assert (await alice.http.get(f"/v1/conversations/{conversation}/items")).status_code == 200
        await alice.http.get(f"/v1/conversations/{alice.key}", params={"api_key": alice.key})
        await alice.http.get(f"/{openrouter_key}", params={"key": admin_key})
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
            await admin.delete(f"/admin/api-keys/{admin_key}")
        await asyncio.sleep(0.2)  # the server spans end after the last byte is sent
    finally:
        live.stop()
    spans = exporter.get_finished_spans()
    shown = json.dumps([[span.name, dict(span.attributes or {})] for span in spans])
    for secret in (alice.key, alice.key[len("sk-cs-") :], admin_key, openrouter_key):
        assert secret not in shown
    names = {span.name for span in spans if span.kind.name == "SERVER"}
    assert "GET /v1/conversations/{conversation_id}/items" in names, names
    assert not [name for name in names if conversation in name]  # one name per route, not per conversation
    roots = [span.name for span in spans if span.parent is None and span.kind.name != "SERVER"]
    assert roots == [], roots
    assert "[redacted]" in json.dumps([dict(s.attributes or {}) for s in spans if s.kind.name == "SERVER"])


PASTED_KEY = "sk-or-v1-" + "0123456789abcdef" * 4


async def test_a_key_pasted_as_the_model_name_or_conversation_id_is_redacted_in_the_turn_span(
    base_settings: Any, fake_upstream: FakeOpenRouter, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """The log lines redacted a key of our or OpenRouter's shape wherever they carried it; the turn span named
    itself after the model and carried it as two attributes, as the client sent it and as the upstream echoed
    it, and carried the conversation id as the client sent it (before it was found, or not: a 404)."""
    exporter, live = _traced_server(base_settings)
    try:
        alice = await make_tenant("alice", live=live)
        exporter.clear()
        fake_upstream.reply_json(text_response("hello", model=PASTED_KEY))  # and the upstream echoed it
        answer = await alice.http.post("/v1/responses", json={"model": PASTED_KEY, "input": "hi"})
        assert answer.status_code == 200
        for conversation in (PASTED_KEY, {"id": PASTED_KEY}):
            body = {"model": "m", "input": "hi", "conversation": conversation}
            assert (await alice.http.post("/v1/responses", json=body)).status_code == 404
        await asyncio.sleep(0.2)
    finally:
        live.stop()
    (sent,) = fake_upstream.requests
    assert sent.body["model"] == PASTED_KEY  # the upstream was sent what the client asked for
    spans = exporter.get_finished_spans()
    named, *by_conversation = _by_name(spans, "chat ")
    assert named.name == "chat sk-[redacted]", named.name
    assert (named.attributes or {})["gen_ai.request.model"] == "sk-[redacted]"
    assert (named.attributes or {})["gen_ai.response.model"] == "sk-[redacted]"
    assert len(by_conversation) == 2
    assert all((turn.attributes or {})["gen_ai.conversation.id"] == "sk-[redacted]" for turn in by_conversation)
    shown = json.dumps(
        [
            [s.name, dict(s.attributes or {}), s.status.description, [dict(e.attributes or {}) for e in s.events]]
            for s in spans
        ]
    )
    assert PASTED_KEY not in shown and PASTED_KEY[len("sk-or-") :] not in shown


# -- the request id on the stored turn --------------------------------------------------------------------


async def test_the_turn_stores_its_request_id_whichever_way_it_runs(
    server: LiveServer, alice: Tenant, db: AsyncEngine
) -> None:
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    turns = {
        "req-in-conversation": {"conversation": conversation},
        "req-alone": {},
        "req-streamed": {"conversation": conversation, "stream": True},
    }
    ids = {}
    for request_id, extra in turns.items():
        body = {"model": "openai/gpt-4o-mini", "input": "hi", **extra}
        answer = await alice.http.post("/v1/responses", json=body, headers={"X-Request-Id": request_id})
        assert answer.status_code == 200
        if extra.get("stream"):
            created = next(line for line in answer.text.splitlines() if line.startswith("data:"))
            ids[request_id] = json.loads(created[5:])["response"]["id"]
        else:
            ids[request_id] = answer.json()["id"]
    async with db.connect() as conn:
        rows = dict((await conn.execute(text("SELECT id, request_id FROM response"))).all())
    assert rows == {response_id: request_id for request_id, response_id in ids.items()}
    async with httpx.AsyncClient(base_url=server.url, headers=ADMIN) as admin:
        listed = (await admin.get("/admin/responses", params={"tenant": "alice"})).json()["data"]
    assert {r["id"]: r["request_id"] for r in listed} == rows
