"""Webhooks for background responses: endpoints through the admin API, events signed so that the official SDK's
`client.webhooks.unwrap` verifies them, delivered from a durable outbox with retries, at least once."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import re
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.webhooks.delivery import MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_ENDPOINT, MAX_IN_FLIGHT_PER_TENANT
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply
from tests.openapi_support import DocumentChecker
from tests.turn_support import MODEL, rows, turn

DELIVERING = {
    "webhook_delivery": True,
    "webhook_poll_seconds": 0.05,
    "webhook_retry_base_seconds": 0.2,
    "webhook_allow_private_addresses": True,
}


@pytest.fixture
def receiver() -> Iterator[FakeOpenRouter]:
    """A webhook receiver on a real socket: it records each request and answers as scripted (200 by default)."""
    fake = FakeOpenRouter()
    fake.start()
    yield fake
    fake.stop()


def _admin_client(live: LiveServer) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {live.settings.admin_api_key}"}
    return httpx.AsyncClient(base_url=live.url, headers=headers, timeout=30)


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with _admin_client(server) as client:
        yield client


async def _endpoint(admin: httpx.AsyncClient, tenant: str, url: str, events: list[str]) -> dict[str, Any]:
    answer = await admin.post(f"/admin/tenants/{tenant}/webhooks", json={"url": url, "events": events})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _background(tenant: Tenant) -> str:
    started = await tenant.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True})
    assert started.status_code == 200, started.text
    response_id: str = started.json()["id"]
    for _ in range(200):
        status = (await tenant.http.get(f"/v1/responses/{response_id}")).json()["status"]
        if status not in {"queued", "in_progress"}:
            return response_id
        await asyncio.sleep(0.05)
    raise AssertionError("the background response never finished")


async def _received(receiver: FakeOpenRouter, count: int, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if len(receiver.requests) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the receiver got {len(receiver.requests)} requests, expected {count}")


async def test_event_is_signed_so_the_sdk_unwraps_it(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter
) -> None:
    live = start_server(**DELIVERING)
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        endpoint = await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        assert endpoint["secret"].startswith("whsec_")
        response_id = await _background(alice)
        await _received(receiver, 1)
        (request,) = receiver.requests
        assert request.method == "POST" and request.path == "/hook"
        client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:1/v1")
        event = client.webhooks.unwrap(request.raw, request.headers, secret=endpoint["secret"])
        assert event.type == "response.completed"
        assert event.data.id == response_id
        assert event.object == "event"
        assert request.headers["webhook-id"] == event.id
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(request.raw + b" ", request.headers, secret=endpoint["secret"])

        await asyncio.sleep(0.3)
        deliveries = (await admin.get("/admin/webhook-deliveries", params={"tenant": "alice"})).json()["data"]
        (delivery,) = deliveries
        assert delivery["state"] == "delivered"
        assert delivery["webhook_id"] == event.id
        assert [a["status_code"] for a in delivery["attempts"]] == [200]


async def test_a_receiver_failing_twice_gets_the_same_event_until_it_acknowledges(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, db: AsyncEngine
) -> None:
    live = start_server(**DELIVERING)
    bob = await make_tenant("bob", live=live)
    receiver.enqueue(Reply(status=500, body={"error": "down"}), Reply(status=503, body={"error": "down"}))
    async with _admin_client(live) as admin:
        await _endpoint(admin, "bob", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        response_id = await _background(bob)
        await _received(receiver, 3)
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == 3
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
        assert len({r.raw for r in receiver.requests}) == 1
        assert receiver.requests[0].body["data"] == {"id": response_id}
        (delivery,) = (await admin.get("/admin/webhook-deliveries")).json()["data"]
        assert delivery["state"] == "delivered"
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
        assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 503", None]
        metrics = (await admin.get("/metrics")).text
        for outcome, at_least in (("retrying", 2), ("delivered", 1)):
            found = re.search(rf'^convstore_webhook_attempts_total\{{outcome="{outcome}"\}} (\S+)$', metrics, re.M)
            assert found is not None and float(found.group(1)) >= at_least, outcome
    (row,) = await rows(db, "SELECT state, attempts, delivered_at IS NOT NULL AS done FROM webhook_delivery")
    assert row == {"state": "delivered", "attempts": 3, "done": True}


async def _stored_endpoint(db: AsyncEngine, tenant: str, endpoint_id: str, url: str, secret: str) -> None:
    """An endpoint written straight to the database, as one stored before its URL's form was refused would be."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_endpoint (id, tenant_id, url, events, secret) "
                "SELECT :id, id, :url, ARRAY['response.completed'], :secret FROM tenant WHERE name = :tenant"
            ),
            {"id": endpoint_id, "url": url, "secret": secret, "tenant": tenant},
        )


async def _settled(admin: httpx.AsyncClient, count: int) -> dict[str, dict[str, Any]]:
    """The deliveries by endpoint once `count` of them are no longer pending."""
    for _ in range(200):
        deliveries = (await admin.get("/admin/webhook-deliveries")).json()["data"]
        if len(deliveries) == count and all(d["state"] != "pending" for d in deliveries):
            break
        await asyncio.sleep(0.05)
    return {d["endpoint_id"]: d for d in deliveries}


async def test_an_endpoint_that_cannot_be_sent_to_fails_its_own_deliveries_and_the_others_are_delivered(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, db: AsyncEngine
) -> None:
    """One row's unexpected error (here a secret damaged in the database) used to abort the whole delivery pass,
    every second: that row stayed pending with no attempt, never given up on, and the pass was cut short."""
    live = start_server(**{**DELIVERING, "webhook_retry_hours": 1 / 3600})  # given up on after about a second
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        good = await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        await _stored_endpoint(db, "alice", "bad_secret", f"http://127.0.0.1:{receiver.port}/other", "whsec_A")
        await _stored_endpoint(db, "alice", "bad_host", "https://" + "a" * 300 + ".com/hook", good["secret"])
        response_id = await _background(alice)
        by_endpoint = await _settled(admin, 3)
    assert by_endpoint[good["id"]]["state"] == "delivered"
    assert [a["status_code"] for a in by_endpoint[good["id"]]["attempts"]] == [200]
    for endpoint_id in ("bad_secret", "bad_host"):
        delivery = by_endpoint[endpoint_id]
        assert delivery["response_id"] == response_id
        assert delivery["state"] == "failed", delivery
        assert delivery["next_attempt_at"] is None  # none is coming
        errors = [a["error"] for a in delivery["attempts"]]
        assert len(errors) >= 2 and all(errors) and len(set(errors)) == 1, errors
    assert "base64" in by_endpoint["bad_secret"]["attempts"][0]["error"]
    assert "not a valid domain name" in by_endpoint["bad_host"]["attempts"][0]["error"]
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_a_stored_host_name_the_resolver_cannot_encode_is_refused_at_each_attempt_then_given_up(
    start_server: Callable[..., LiveServer], make_tenant: Any, db: AsyncEngine
) -> None:
    """Where private addresses are refused, a delivery resolves the host first: for an empty label or one over
    63 characters the resolver raised UnicodeError, which no delivery expected."""
    settings = {**DELIVERING, "webhook_allow_private_addresses": False, "webhook_retry_hours": 1 / 3600}
    live = start_server(**settings)
    alice = await make_tenant("alice", live=live)
    await _stored_endpoint(db, "alice", "long_label", "https://" + "a" * 300 + ".com/hook", "whsec_" + "A" * 44)
    await _stored_endpoint(db, "alice", "empty_label", "https://a..com/hook", "whsec_" + "A" * 44)
    await _background(alice)
    async with _admin_client(live) as admin:
        by_endpoint = await _settled(admin, 2)
    for delivery in by_endpoint.values():
        assert delivery["state"] == "failed", delivery
        assert len(delivery["attempts"]) >= 2
        assert all(a["error"].startswith("refused: url host is not a valid domain name") for a in delivery["attempts"])


class FakeDns:
    """Answers for made-up names, at socket.getaddrinfo itself (the service's code is left as it is): each name's
    answers in turn, round and round; other names are resolved as usual. Records which thread asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._answers: dict[str, Iterator[str]] = {}
        self.lookups: list[tuple[str, str]] = []  # (name, thread)
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self._getaddrinfo)

    def answer(self, name: str, *addresses: str) -> None:
        self._answers[name] = itertools.cycle(addresses)

    def _getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self._answers:
            return self._real(host, port, *args, **kwargs)
        self.lookups.append((name, threading.current_thread().name))
        address = next(self._answers[name])
        sockaddr = (address, int(port or 0)) if ":" not in address else (address, int(port or 0), 0, 0)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    def threads(self) -> set[str]:
        return {re.sub(r"_\d+$", "", thread) for _, thread in self.lookups}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(monkeypatch)


# The fake DNS answers at socket.getaddrinfo: the service's own lookups (in its resolver's threads) see it on
# either loop; under uvloop (as served) anything resolved by the loop goes through libuv instead and does not.
LOOPS = pytest.mark.parametrize("loop", ["auto", "asyncio"])


@LOOPS
async def test_a_name_rebound_to_loopback_after_its_check_never_reaches_the_receiver(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, fake_dns: FakeDns, loop: str
) -> None:
    """DNS rebinding: the delivery checked the name's addresses, then httpx resolved it again to connect, so a
    name answering a public address, then 127.0.0.1, was sent to the service's own network. Now each connection
    goes to the address checked (here one that never answers) and the next lookup's loopback is refused."""
    public = "192.0.0.9"
    assert ipaddress.ip_address(public).is_global
    fake_dns.answer("rebind.test", public, "127.0.0.1")
    settings = {**DELIVERING, "webhook_allow_private_addresses": False, "webhook_timeout_seconds": 1.0}
    live = start_server(loop=loop, **{**settings, "webhook_retry_hours": 2 / 3600})
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        endpoint = await _endpoint(admin, "alice", f"http://rebind.test:{receiver.port}/hook", ["response.completed"])
        await _background(alice)
        delivery = (await _settled(admin, 1))[endpoint["id"]]
    assert receiver.requests == []
    assert delivery["state"] == "failed", delivery
    errors = [attempt["error"] for attempt in delivery["attempts"]]
    assert "refused: rebind.test resolves to a non-public address (127.0.0.1)" in errors, errors
    assert len(fake_dns.lookups) == len(errors)  # one lookup per attempt, none after the check
    assert fake_dns.threads() == {"webhook-resolver"}


@LOOPS
async def test_a_name_resolving_to_loopback_is_refused_at_delivery_and_nothing_reaches_the_receiver(
    start_server: Callable[..., LiveServer],
    make_tenant: Any,
    receiver: FakeOpenRouter,
    fake_dns: FakeDns,
    db: AsyncEngine,
    loop: str,
) -> None:
    """And the lookup runs in the webhooks' own resolver threads, not the event loop's default executor."""
    fake_dns.answer("hooks.test", "127.0.0.1")
    settings = {**DELIVERING, "webhook_allow_private_addresses": False, "webhook_retry_hours": 1 / 3600}
    live = start_server(loop=loop, **settings)
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        by_name = await _endpoint(admin, "alice", f"http://hooks.test:{receiver.port}/hook", ["response.completed"])
        secret = by_name["secret"]
        await _stored_endpoint(db, "alice", "localhost", f"http://localhost:{receiver.port}/hook", secret)
        await _background(alice)
        by_endpoint = await _settled(admin, 2)
    assert receiver.requests == []
    expected = {
        by_name["id"]: "refused: hooks.test resolves to a non-public address (127.0.0.1)",
        "localhost": "refused: url points to a loopback host",
    }
    for endpoint_id, error in expected.items():
        delivery = by_endpoint[endpoint_id]
        assert delivery["state"] == "failed", delivery
        assert {attempt["error"] for attempt in delivery["attempts"]} == {error}
    assert fake_dns.lookups and fake_dns.threads() == {"webhook-resolver"}


@LOOPS
async def test_a_name_resolving_to_loopback_is_delivered_where_private_addresses_are_allowed(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, fake_dns: FakeDns, loop: str
) -> None:
    fake_dns.answer("hooks.test", "127.0.0.1")
    live = start_server(loop=loop, **DELIVERING)
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        await _endpoint(admin, "alice", f"http://hooks.test:{receiver.port}/hook", ["response.completed"])
        await _endpoint(admin, "alice", f"http://localhost:{receiver.port}/other", ["response.completed"])
        await _background(alice)
        await _received(receiver, 2)
    assert sorted((r.path, r.headers["host"]) for r in receiver.requests) == [
        ("/hook", f"hooks.test:{receiver.port}"),
        ("/other", f"localhost:{receiver.port}"),
    ]
    assert fake_dns.threads() == {"webhook-resolver"}


async def test_deliveries_do_not_go_through_an_environment_proxy(
    start_server: Callable[..., LiveServer],
    make_tenant: Any,
    receiver: FakeOpenRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy resolves the name itself, past the check: the webhooks' client ignores HTTP_PROXY and the like."""
    proxy = FakeOpenRouter()
    proxy.start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        live = start_server(**DELIVERING)  # its clients are made as it starts, while the variable is set
        monkeypatch.delenv("HTTP_PROXY")
        alice = await make_tenant("alice", live=live)
        async with _admin_client(live) as admin:
            await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
            await _background(alice)
            await _received(receiver, 1)
        assert proxy.requests == []
    finally:
        proxy.stop()


async def test_an_outcome_stored_while_no_process_delivers_is_delivered_after_a_restart(
    alice: Tenant,
    admin: httpx.AsyncClient,
    start_server: Callable[..., LiveServer],
    receiver: FakeOpenRouter,
    db: AsyncEngine,
    fake_upstream: FakeOpenRouter,
) -> None:
    # The session's server does not deliver: the outcome waits in the outbox, as across a restart.
    await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
    response_id = await _background(alice)
    await turn(alice.http, "not background: no event")
    await asyncio.sleep(0.3)
    assert receiver.requests == []
    (pending,) = await rows(db, "SELECT event_type, response_id, state FROM webhook_delivery")
    assert pending == {"event_type": "response.completed", "response_id": response_id, "state": "pending"}

    start_server(**DELIVERING)
    await _received(receiver, 1)
    assert receiver.requests[0].body["data"] == {"id": response_id}
    assert receiver.requests[0].body["type"] == "response.completed"


async def test_failed_and_cancelled_outcomes_reach_only_the_endpoints_subscribed(
    alice: Tenant, admin: httpx.AsyncClient, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    url = "https://hooks.example.com/a"
    failed_only = await _endpoint(admin, "alice", url, ["response.failed"])
    everything = await _endpoint(
        admin, "alice", url, ["response.completed", "response.failed", "response.cancelled", "response.incomplete"]
    )
    fake_upstream.enqueue(Reply(status=400, body={"error": {"message": "bad", "code": 400}}))
    failed = await _background(alice)
    fake_upstream.enqueue(Reply(kind="stall", delay=5))
    started = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x", "background": True})
    cancelled = started.json()["id"]
    await asyncio.sleep(0.2)
    assert (await alice.http.post(f"/v1/responses/{cancelled}/cancel")).status_code == 200
    events = await rows(db, "SELECT endpoint_id, event_type, response_id FROM webhook_delivery")
    expected = [
        {"endpoint_id": failed_only["id"], "event_type": "response.failed", "response_id": failed},
        {"endpoint_id": everything["id"], "event_type": "response.failed", "response_id": failed},
        {"endpoint_id": everything["id"], "event_type": "response.cancelled", "response_id": cancelled},
    ]
    assert sorted(events, key=str) == sorted(expected, key=str)


async def test_endpoints_are_validated_listed_without_secrets_and_removed(
    start_server: Callable[..., LiveServer], make_tenant: Any
) -> None:
    live = start_server(webhook_allow_private_addresses=False)
    alice = await make_tenant("alice", live=live)
    async with _admin_client(live) as admin:
        await _validated_listed_removed(admin, alice)


async def _validated_listed_removed(admin: httpx.AsyncClient, alice: Tenant) -> None:
    url = "/admin/tenants/alice/webhooks"
    refused = [
        ({"url": "ftp://example.com/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://127.0.0.1:9/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://[::1]/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://169.254.169.254/latest", "events": ["response.completed"]}, "url"),
        ({"url": "http://10.1.2.3/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://localhost/x", "events": ["response.completed"]}, "url"),
        # Addresses in the forms the system resolver reads as addresses (inet_aton's), not only the dotted quad.
        ({"url": "http://2130706433/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://0x7f.1/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://127.1/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://017700000001/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://0/x", "events": ["response.completed"]}, "url"),
        ({"url": "https://user:pw@example.com/x", "events": ["response.completed"]}, "url"),
        ({"url": "https://example.com/a\u0000b", "events": ["response.completed"]}, "url"),  # text cannot hold it
        ({"url": "https://example.com/a b", "events": ["response.completed"]}, "url"),
        # Host names the resolver (IDNA) or the HTTP client cannot take: empty or over-long labels, not IDNA 2008.
        ({"url": "https://" + "a" * 300 + ".com/", "events": ["response.completed"]}, "url"),
        ({"url": "https://a..com/", "events": ["response.completed"]}, "url"),
        (
            {
                "url": "https://" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com/",
                "events": ["response.completed"],
            },
            "url",
        ),
        ({"url": "https://\u2603.net/", "events": ["response.completed"]}, "url"),
        # What urlsplit cannot read (these were 500s), or reads otherwise than httpx, which refused them only at
        # every delivery ("[…]x": a port httpx cannot read); port 0; a name no resolver finds.
        ({"url": "http://[2606:4700::1111/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://2606:4700::1111]/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://[1.2.3.4]/", "events": ["response.completed"]}, "url"),
        ({"url": "http://[2606:4700::1111]x/", "events": ["response.completed"]}, "url"),
        ({"url": "http://example.com:0/x", "events": ["response.completed"]}, "url"),
        ({"url": "http://exa%mple.com/", "events": ["response.completed"]}, "url"),
        ({"url": "http://xn--zz.example.com/", "events": ["response.completed"]}, "url"),  # no valid A-label
        ({"events": ["response.completed"]}, "url"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "events": ["response.created"]}, "events[0]"),
        ({"url": "https://example.com/x", "events": ["response.completed"], "extra": 1}, "extra"),
    ]
    for body, param in refused:
        answer = await admin.post(url, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, body
    for allowed in ("https://b\u00fccher.example/x", "https://" + "a" * 63 + ".example.com./x"):
        answer = await admin.post(url, json={"url": allowed, "events": ["response.completed"]})
        assert answer.status_code == 200, (allowed, answer.text)
        assert (await admin.delete(f"{url}/{answer.json()['id']}")).status_code == 200
    valid = {"url": "https://example.com/x", "events": ["response.completed"]}
    assert (await admin.post("/admin/tenants/nobody/webhooks", json=valid)).status_code == 404
    assert (
        await alice.http.post(url, json={"url": "https://example.com/x", "events": ["response.completed"]})
    ).status_code == 403

    created = await _endpoint(admin, "alice", "https://example.com/x", ["response.failed", "response.completed"])
    assert created["events"] == ["response.completed", "response.failed"]
    listed = (await admin.get(url)).json()["data"]
    assert listed == [{k: v for k, v in created.items() if k != "secret"}]
    removed = await admin.delete(f"{url}/{created['id']}")
    assert removed.status_code == 200
    assert removed.json() == {"object": "webhook_endpoint.deleted", "id": created["id"], "deleted": True}
    assert (await admin.delete(f"{url}/{created['id']}")).status_code == 404
    assert (await admin.get(url)).json()["data"] == []


async def test_webhook_and_lifecycle_answers_match_the_documented_schemas(
    admin: httpx.AsyncClient, alice: Tenant, anonymous: httpx.AsyncClient
) -> None:
    checker = DocumentChecker((await anonymous.get("/docs/openapi.json")).json())
    url = "/admin/tenants/{tenant}/webhooks"
    created = await admin.post(
        "/admin/tenants/alice/webhooks", json={"url": "https://e.com", "events": ["response.failed"]}
    )
    checker.check("POST", url, created)
    checker.check("GET", url, await admin.get("/admin/tenants/alice/webhooks"))
    checker.check("POST", url, await admin.post("/admin/tenants/alice/webhooks", json={"url": "ftp://x"}))
    checker.check("GET", "/admin/webhook-deliveries", await admin.get("/admin/webhook-deliveries"))
    removed = await admin.delete(f"/admin/tenants/alice/webhooks/{created.json()['id']}")
    checker.check("DELETE", url + "/{endpoint_id}", removed)

    conv = (await alice.http.post("/v1/conversations", json={"items": [{"role": "user", "content": "x"}]})).json()
    (item,) = (await alice.http.get(f"/v1/conversations/{conv['id']}/items")).json()["data"]
    fork = await alice.http.post(f"/v1/conversations/{conv['id']}/fork", json={"item_id": item["id"]})
    checker.check("POST", "/v1/conversations/{conversation_id}/fork", fork)
    exported = (await alice.http.get(f"/v1/conversations/{conv['id']}/export")).content
    headers = {"Content-Type": "application/jsonl"}
    checker.check(
        "POST",
        "/v1/conversations/import",
        await alice.http.post("/v1/conversations/import", content=exported, headers=headers),
    )
    everything = (await admin.get("/admin/export", params={"tenant": "alice"})).content
    imported = await admin.post("/admin/tenants/alice/import", content=everything, headers=headers)
    checker.check("POST", "/admin/tenants/{tenant}/import", imported)
    checker.check("POST", "/admin/retention/run", await admin.post("/admin/retention/run"))
    checker.check("GET", "/admin/retention", await admin.get("/admin/retention"))
    checker.check(
        "GET", "/admin/tenants/{tenant}/retention/preview", await admin.get("/admin/tenants/alice/retention/preview")
    )


async def test_a_hard_delete_of_a_thread_takes_its_pending_deliveries_with_it(
    alice: Tenant, admin: httpx.AsyncClient, receiver: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The session's server does not deliver: the deliveries wait in the outbox. A hard-deleted thread's would
    otherwise be tried for WEBHOOK_RETRY_HOURS for responses that no longer exist; other threads' stay."""
    await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
    doomed = await _background(alice)
    kept = await _background(alice)
    pending = {r["response_id"] for r in await rows(db, "SELECT response_id FROM webhook_delivery")}
    assert pending == {doomed, kept}
    assert (await admin.delete(f"/admin/threads/{doomed}")).status_code == 200
    assert await rows(db, "SELECT response_id FROM webhook_delivery") == [{"response_id": kept}]


async def test_a_response_deleted_by_its_tenant_or_by_retention_takes_its_deliveries_with_it(
    alice: Tenant, admin: httpx.AsyncClient, receiver: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Waiting in the outbox (the session's server does not deliver), a delivery for a deleted response would be
    sent for an id that answers 404, and kept for good, naming it."""
    await _endpoint(admin, "alice", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
    deleted, purged, kept = [await _background(alice) for _ in range(3)]
    assert (await alice.http.delete(f"/v1/responses/{deleted}")).status_code == 200
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE response SET created_at = now() - interval '40 days' WHERE id = :id"), {"id": purged}
        )
    policy = {"responses_days": 30, "conversations_idle_days": None}
    assert (await admin.put("/admin/tenants/alice/retention", json=policy)).status_code == 200
    run = await admin.post("/admin/retention/run")
    assert run.status_code == 200 and run.json()["responses"] == 1, run.text
    assert await rows(db, "SELECT response_id FROM webhook_delivery") == [{"response_id": kept}]


async def test_a_delivery_whose_response_is_deleted_while_it_is_sent_is_not_recorded_nor_sent_again(
    start_server: Callable[..., LiveServer],
    make_tenant: Any,
    receiver: FakeOpenRouter,
    db: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.webhooks")
    live = start_server(**DELIVERING)
    bob = await make_tenant("bob", live=live)
    # The receiver answers 500 after a pause: the delete lands while the attempt is under way.
    receiver.enqueue(Reply(status=500, body={"error": "slow"}, delay=1.0))
    async with _admin_client(live) as admin:
        await _endpoint(admin, "bob", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        response_id = await _background(bob)
        await _received(receiver, 1)
        assert (await bob.http.delete(f"/v1/responses/{response_id}")).status_code == 200
        assert await rows(db, "SELECT pk FROM webhook_delivery") == []
        await asyncio.sleep(1.5)  # the attempt ends, and a retry would be due 0.2 s later
        assert len(receiver.requests) == 1
        assert (await admin.get("/admin/webhook-deliveries")).json()["data"] == []
    assert await rows(db, "SELECT pk FROM webhook_attempt") == []
    assert "attempt not recorded" not in caplog.text
    assert any("deleted while it was sent" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"before": "99999999999999999999999"}, "before", None),  # past a bigint: was a 500
        ({"before": "-1"}, "before", None),
        ({"before": "x"}, "before", None),
        ({"limit": "5", "before": "x"}, "before", None),  # the bad one is named, not limit
        ({"limit": "0"}, "limit", None),
        ({"limit": " 5"}, "limit", None),  # int() takes these: no other listing did
        ({"limit": "\u0661"}, "limit", None),
        ({"tenant": "nosuch"}, "tenant", "unknown_tenant"),  # as on every admin listing
    ],
)
async def test_a_bad_delivery_listing_parameter_is_a_400_naming_it(
    admin: httpx.AsyncClient, params: dict[str, str], param: str, code: str | None
) -> None:
    answer = await admin.get("/admin/webhook-deliveries", params=params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["code"] == code and error["type"] == "invalid_request_error", error


class MisbehavingReceiver:
    """Webhook receivers that misbehave at the socket: `/hang…` reads the request and never answers,
    `/trickle` sends its status line and then one byte of its headers every 0.2 s, `/huge` answers 200 with
    a 256 MiB body written as fast as the connection takes it (`huge_bytes_written` counts what it took)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.huge_bytes_written = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.paths.append(path)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if path.startswith("/hang"):
                await asyncio.sleep(3600)
            elif path == "/trickle":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                for byte in b"X-Slow: " + b"x" * 3600:
                    await asyncio.sleep(0.2)
                    writer.write(bytes([byte]))
                    await writer.drain()
            elif path == "/huge":
                size, chunk = 256 * 1024 * 1024, b"x" * 65536
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
                while self.huge_bytes_written < size:
                    writer.write(chunk)
                    await writer.drain()
                    self.huge_bytes_written += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _deliveries_of(admin: httpx.AsyncClient, tenant: str) -> dict[str, dict[str, Any]]:
    deliveries = (await admin.get("/admin/webhook-deliveries", params={"tenant": tenant})).json()["data"]
    return {d["endpoint_id"]: d for d in deliveries}


async def test_a_receiver_that_hangs_trickles_or_floods_holds_up_only_its_own_delivery_and_briefly(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter
) -> None:
    """httpx's timeout bounds each read, not an attempt: a receiver trickling its answer held its attempt for as
    long as it liked, and every delivery pass waited for its slowest send, so that no other tenant's events went
    out, on any process that claimed it. And the answer's body was read whole, however large."""
    misbehaving = MisbehavingReceiver()
    port = await misbehaving.start()
    try:
        live = start_server(**{**DELIVERING, "webhook_timeout_seconds": 5.0})
        alice = await make_tenant("alice", live=live)
        bob = await make_tenant("bob", live=live)
        async with _admin_client(live) as admin:
            endpoints = {
                path: (await _endpoint(admin, "alice", f"http://127.0.0.1:{port}{path}", ["response.completed"]))["id"]
                for path in ("/hang", "/trickle", "/huge")
            }
            await _endpoint(admin, "bob", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
            await _background(alice)
            for _ in range(100):
                if len(misbehaving.paths) == 3:
                    break
                await asyncio.sleep(0.05)
            assert sorted(misbehaving.paths) == ["/hang", "/huge", "/trickle"]
            # Alice's receivers are holding their attempts: Bob's event goes out meanwhile, not after them.
            await _background(bob)
            finished = asyncio.get_running_loop().time()
            await _received(receiver, 1)
            assert asyncio.get_running_loop().time() - finished < 2.5

            by_endpoint: dict[str, dict[str, Any]] = {}
            for _ in range(200):
                by_endpoint = await _deliveries_of(admin, "alice")
                if all(by_endpoint[e]["attempts"] for e in endpoints.values()):
                    break
                await asyncio.sleep(0.05)
        huge, hang, trickle = (by_endpoint[endpoints[path]] for path in ("/huge", "/hang", "/trickle"))
        # The status is all an attempt reads: the flood's connection was closed after the headers.
        assert huge["state"] == "delivered" and huge["attempts"][0]["status_code"] == 200
        assert misbehaving.huge_bytes_written < 32 * 1024 * 1024
        for stalled in (hang, trickle):
            (attempt,) = stalled["attempts"]
            assert stalled["state"] == "pending", stalled
            assert attempt["error"] == "no answer within 5 s (WEBHOOK_TIMEOUT_SECONDS)"
            # The time-out counts from the event loop's clock, which uvloop reads once per loop iteration: it may
            # lag the attempt's own start (time.monotonic) by that iteration's time, a few milliseconds.
            assert 4900 <= attempt["duration_ms"] < 7000
    finally:
        await misbehaving.stop()


@pytest.mark.parametrize("hanging", [1, 4])
async def test_receivers_that_hang_with_a_backlog_take_only_their_share_of_the_sends(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, db: AsyncEngine, hanging: int
) -> None:
    """Due deliveries were claimed oldest first into one pool of sends: a receiver that hangs, with a backlog (it
    was down for a while), took every send the process had, and another tenant's event waited for its time-outs;
    so did one tenant's several receivers. Now each has its share (MAX_IN_FLIGHT_PER_ENDPOINT, _PER_TENANT)."""
    misbehaving = MisbehavingReceiver()
    port = await misbehaving.start()
    try:
        live = start_server(**{**DELIVERING, "webhook_timeout_seconds": 5.0, "webhook_delivery": False})
        alice = await make_tenant("alice", live=live)
        bob = await make_tenant("bob", live=live)
        async with _admin_client(live) as admin:
            for n in range(hanging):
                await _endpoint(admin, "alice", f"http://127.0.0.1:{port}/hang{n}", ["response.completed"])
            await _endpoint(admin, "bob", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        await _background(alice)
        async with db.begin() as conn:  # the backlog: 150 more of each of alice's endpoints' events, all due
            await conn.execute(
                text(
                    "INSERT INTO webhook_delivery (event_id, endpoint_id, tenant_id, event_type, response_id,"
                    " next_attempt_at, created_at)"
                    " SELECT 'evt_backlog_' || pk || '_' || n, endpoint_id, tenant_id, event_type, response_id,"
                    " now() - interval '1 hour', now() - interval '1 hour'"
                    " FROM webhook_delivery, generate_series(1, 150) AS n"
                )
            )
        start_server(**{**DELIVERING, "webhook_timeout_seconds": 5.0})  # the process that delivers
        share = min(MAX_IN_FLIGHT_PER_ENDPOINT * hanging, MAX_IN_FLIGHT_PER_TENANT)
        assert share < MAX_IN_FLIGHT
        for _ in range(100):
            if len(misbehaving.paths) >= share:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert len(misbehaving.paths) == share
        assert max(Counter(misbehaving.paths).values()) <= MAX_IN_FLIGHT_PER_ENDPOINT
        await _background(bob)
        finished = asyncio.get_running_loop().time()
        await _received(receiver, 1)
        assert asyncio.get_running_loop().time() - finished < 2.5
    finally:
        await misbehaving.stop()


# What another process leaves on the row once this one's claim ran out: its own claim, while it sends, then
# its success.
TAKEN_OVER = {
    "claimed": "UPDATE webhook_delivery SET locked_until = now() + interval '1 minute' RETURNING locked_until",
    "delivered": (
        "UPDATE webhook_delivery SET state = 'delivered', attempts = attempts + 1, locked_until = NULL,"
        " delivered_at = now(), next_attempt_at = NULL RETURNING locked_until"
    ),
}


@pytest.mark.parametrize("other", sorted(TAKEN_OVER))
async def test_an_attempt_that_outlived_its_claim_does_not_undo_the_outcome_of_the_one_that_took_it_over(
    start_server: Callable[..., LiveServer], make_tenant: Any, receiver: FakeOpenRouter, db: AsyncEngine, other: str
) -> None:
    """A slow attempt whose claim ran out recorded its failure over what the process that took the row over had
    done: a `delivered` row became `pending` (sent a third time) or `failed`, and a claim still sending was
    released, so that the event went out a third time at once."""
    live = start_server(**DELIVERING)
    bob = await make_tenant("bob", live=live)
    receiver.enqueue(Reply(status=500, body={"error": "slow"}, delay=1.5))
    async with _admin_client(live) as admin:
        await _endpoint(admin, "bob", f"http://127.0.0.1:{receiver.port}/hook", ["response.completed"])
        await _background(bob)
        await _received(receiver, 1)
        async with db.begin() as conn:
            other_claim = (await conn.execute(text(TAKEN_OVER[other]))).scalar_one()
        for _ in range(100):
            if await rows(db, "SELECT pk FROM webhook_attempt"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a retry would be due 0.2 s after the failure
        (delivery,) = (await admin.get("/admin/webhook-deliveries")).json()["data"]
    # The stale attempt is logged, and changes nothing else.
    assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(500, "HTTP 500")]
    (row,) = await rows(db, "SELECT state, attempts, locked_until FROM webhook_delivery")
    if other == "delivered":
        assert row == {"state": "delivered", "attempts": 1, "locked_until": None}
        assert delivery["next_attempt_at"] is None
    else:
        assert row == {"state": "pending", "attempts": 0, "locked_until": other_claim}
    assert len(receiver.requests) == 1


async def test_shutdown_gives_back_the_claims_of_the_sends_it_stops(
    start_server: Callable[..., LiveServer], make_tenant: Any, db: AsyncEngine
) -> None:
    """A send under way at shutdown is stopped; its claim used to stay, so that no process sent the event for up
    to a minute (every rolling restart delayed such events so), and the attempt, which the receiver may have had,
    was in no log."""
    misbehaving = MisbehavingReceiver()
    port = await misbehaving.start()
    try:
        live = start_server(**DELIVERING)
        alice = await make_tenant("alice", live=live)
        async with _admin_client(live) as admin:
            await _endpoint(admin, "alice", f"http://127.0.0.1:{port}/hang", ["response.completed"])
        await _background(alice)
        for _ in range(100):
            if misbehaving.paths:
                break
            await asyncio.sleep(0.05)
        assert misbehaving.paths == ["/hang"]
        async with _admin_client(live) as admin:  # an operator sees the send under way
            (sending,) = (await admin.get("/admin/webhook-deliveries")).json()["data"]
        (claimed,) = await rows(
            db, "SELECT floor(extract(epoch FROM locked_until))::bigint AS until FROM webhook_delivery"
        )
        assert sending["claimed_until"] == claimed["until"] and sending["attempts"] == []
        await asyncio.to_thread(live.stop)
        (row,) = await rows(db, "SELECT state, attempts, locked_until FROM webhook_delivery")
        assert row == {"state": "pending", "attempts": 1, "locked_until": None}
        (attempt,) = await rows(db, "SELECT status_code, error FROM webhook_attempt")
        assert attempt == {"status_code": None, "error": "stopped: the process shut down"}
    finally:
        await misbehaving.stop()
