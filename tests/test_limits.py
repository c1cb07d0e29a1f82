"""One tenant cannot hurt another: request rates and turns in flight per tenant and per key (429 with
Retry-After), a tenant's share of the upstream pool, wrong keys remembered, stream consumers that stop reading
disconnected while their turn is stored, and connections that never finish their headers closed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.limits.connections import MIN_BODY_RATE
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_stream_events
from tests.stream_support import stored_outputs, wait_until_ended
from tests.turn_support import MODEL, rows

StartServer = Callable[..., LiveServer]
MakeTenant = Callable[..., Awaitable[Tenant]]


def _rate_limited(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 429, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    return error


async def _second_key(db: AsyncEngine, tenant: Tenant, live: LiveServer) -> httpx.AsyncClient:
    from service.keys import service as keys

    created = await keys.create_key(db, tenant=tenant.name)
    return httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {created.secret}"}, timeout=30)


async def test_a_tenant_beyond_its_request_rate_gets_429_and_others_do_not(
    start_server: StartServer, make_tenant: MakeTenant
) -> None:
    live = start_server(tenant_requests_per_second=1, tenant_request_burst=3)
    alice = await make_tenant("alice", live=live)
    bob = await make_tenant("bob", live=live)
    statuses = [(await alice.http.get("/v1/conversations/conv_unknown")).status_code for _ in range(3)]
    assert statuses == [404, 404, 404]
    error = _rate_limited(await alice.http.get("/v1/conversations/conv_unknown"))
    assert "this tenant" in error["message"]
    assert (await bob.http.get("/v1/conversations/conv_unknown")).status_code == 404
    await asyncio.sleep(1.05)  # one request a second refills
    assert (await alice.http.get("/v1/conversations/conv_unknown")).status_code == 404


async def test_the_rate_is_split_across_the_processes_that_share_it(
    start_server: StartServer, make_tenant: MakeTenant
) -> None:
    live = start_server(tenant_requests_per_second=4, tenant_request_burst=4, limit_processes=2)
    alice = await make_tenant("alice", live=live)
    assert [(await alice.http.get("/v1/conversations/conv_x")).status_code for _ in range(2)] == [404, 404]
    _rate_limited(await alice.http.get("/v1/conversations/conv_x"))


async def test_a_key_beyond_its_request_rate_gets_429_while_the_tenants_other_key_goes_on(
    start_server: StartServer, make_tenant: MakeTenant, db: AsyncEngine
) -> None:
    live = start_server(key_requests_per_second=1, key_request_burst=2)
    alice = await make_tenant("alice", live=live)
    other_key = await _second_key(db, alice, live)
    async with other_key:
        for _ in range(2):
            assert (await alice.http.get("/v1/conversations/conv_x")).status_code == 404
        error = _rate_limited(await alice.http.get("/v1/conversations/conv_x"))
        assert "this API key" in error["message"]
        assert (await other_key.get("/v1/conversations/conv_x")).status_code == 404


def _slow_stream(seconds: float) -> Reply:
    """What OpenRouter streams for a background turn, taking about `seconds`."""
    events = text_stream_events("slow")
    return Reply(kind="sse", events=events, delay=seconds / len(events))


async def _start_background(client: httpx.AsyncClient, text: str = "work") -> httpx.Response:
    return await client.post("/v1/responses", json={"model": MODEL, "input": text, "background": True})


async def _upstream_received(fake_upstream: FakeOpenRouter, count: int) -> None:
    for _ in range(200):
        if len(fake_upstream.requests) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the upstream got {len(fake_upstream.requests)} requests, not {count}")


async def test_turns_in_flight_per_tenant_count_background_turns_and_free_up_when_stored(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    live = start_server(tenant_turns_in_flight=2)
    alice = await make_tenant("alice", live=live)
    bob = await make_tenant("bob", live=live)
    for _ in range(2):
        fake_upstream.enqueue(_slow_stream(1.0))
    started = [await _start_background(alice.http) for _ in range(2)]
    assert [answer.status_code for answer in started] == [200, 200]
    await _upstream_received(fake_upstream, 2)
    error = _rate_limited(await _start_background(alice.http, "one too many"))
    assert "turns in flight" in error["message"]
    refused_plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "plain"})
    _rate_limited(refused_plain)
    bob_turn = await bob.http.post("/v1/responses", json={"model": MODEL, "input": "mine"})
    assert bob_turn.status_code == 200, bob_turn.text
    # The refused turns were neither stored nor sent upstream.
    assert len(fake_upstream.requests) == 3
    assert len(await rows(db, "SELECT id FROM response")) == 3
    for answer in started:
        ended = await wait_until_ended(alice.http, answer.json()["id"])
        assert ended["status"] == "completed", ended["error"]
    assert (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "again"})).status_code == 200


async def test_turns_in_flight_per_key_leave_the_tenants_other_keys_free(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    live = start_server(key_turns_in_flight=1, tenant_turns_in_flight=0)
    alice = await make_tenant("alice", live=live)
    fake_upstream.enqueue(_slow_stream(1.0))
    first = await _start_background(alice.http)
    assert first.status_code == 200
    await _upstream_received(fake_upstream, 1)
    error = _rate_limited(await _start_background(alice.http))
    assert "this API key" in error["message"]
    async with await _second_key(db, alice, live) as other_key:
        assert (await _start_background(other_key)).status_code == 200
    await wait_until_ended(alice.http, first.json()["id"])


async def _timed_turn(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    answer = await client.post("/v1/responses", json={"model": MODEL, "input": "quick"})
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


async def test_a_tenant_flooding_background_turns_keeps_to_its_share_of_the_upstream_pool(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter
) -> None:
    # 4 upstream connections, half of them for any one tenant: the flood gets 2, the rest are refused at once.
    live = start_server(upstream_max_connections=4, upstream_tenant_share=0.5, tenant_turns_in_flight=1000)
    flooder = await make_tenant("flooder", live=live)
    ordinary = await make_tenant("ordinary", live=live)
    idle = [await _timed_turn(ordinary.http) for _ in range(7)]
    for _ in range(2):
        fake_upstream.enqueue(_slow_stream(3.0))
    flood = await asyncio.gather(*(_start_background(flooder.http) for _ in range(40)))
    statuses = sorted(answer.status_code for answer in flood)
    assert statuses == [200] * 2 + [429] * 38
    await _upstream_received(fake_upstream, 7 + 2)
    busy = [await _timed_turn(ordinary.http) for _ in range(7)]
    # Within 2x of idle (medians; 20 ms of slack for a shared machine's noise at millisecond scale).
    assert statistics.median(busy) <= 2 * statistics.median(idle) + 0.02, (idle, busy)


async def test_a_wrong_key_is_remembered_as_wrong_briefly(
    server: LiveServer, anonymous: httpx.AsyncClient, db: AsyncEngine, make_tenant: MakeTenant
) -> None:
    alice = await make_tenant("alice")
    wrong = "sk-cs-not-a-key-" + "x" * 30
    headers = {"Authorization": f"Bearer {wrong}"}
    assert (await anonymous.get("/v1/conversations/conv_x", headers=headers)).status_code == 401
    # The key now exists in the database (as if just created), but the miss is remembered: no lookup is made.
    async with db.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO api_key (id, tenant_id, name, prefix, key_hash, is_admin) "
            "SELECT 'key_late', tenant_id, 'late', 'sk-cs-late', $1, false FROM api_key WHERE id = $2",
            (hashlib.sha256(wrong.encode()).digest(), alice.key_id),
        )
    assert (await anonymous.get("/v1/conversations/conv_x", headers=headers)).status_code == 401


def _raw_request(port: int, body: bytes, *, receive_buffer: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(body)
    return sock


def _read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sent, and whether it closed the connection within `timeout`."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    return b"".join(chunks), True


async def test_a_stream_consumer_that_stops_reading_is_disconnected_and_its_turn_is_stored(
    start_server: StartServer,
    make_tenant: MakeTenant,
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    live = start_server(stream_write_timeout=0.5)
    uvicorn_errors = logging.getLogger("uvicorn.error")  # its own handler, set as the server starts
    uvicorn_errors.addHandler(caplog.handler)
    alice = await make_tenant("alice", live=live)
    text = "lorem ipsum " * 700_000  # 8 MB: far more than the sockets hold
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(text, chunks=400)))
    body = f'{{"model": "{MODEL}", "input": "talk", "stream": true}}'.encode()
    request = (
        f"POST /v1/responses HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice.key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = await asyncio.to_thread(_raw_request, live.port, request)
    try:
        for _ in range(300):  # the turn goes on without its reader
            stored = await rows(db, "SELECT id, status FROM response")
            if stored and stored[0]["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert [row["status"] for row in stored] == ["completed"]
        # Still reading nothing for longer than the write timeout: a fast turn can be stored before the server
        # has waited that long on a write, and a reader starting then would drain the stream in time.
        await asyncio.sleep(3 * 0.5)
        received, closed = await asyncio.to_thread(_read_to_end, sock, 5.0)
    finally:
        sock.close()
    assert closed, "the server kept the connection of a client that read nothing"
    assert b"response.completed" not in received
    [output] = await stored_outputs(db, stored[0]["id"])
    assert output["content"][0]["text"] == text
    # A disconnect by design, logged as such: not an "Exception in ASGI application" with its traceback.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("disconnected a stream client" in r.getMessage() for r in caplog.records)
    uvicorn_errors.removeHandler(caplog.handler)


async def test_a_connection_that_never_finishes_its_headers_is_closed(start_server: StartServer) -> None:
    live = start_server(http_header_timeout=0.5)
    silent = await asyncio.to_thread(_raw_request, live.port, b"")
    partial = await asyncio.to_thread(_raw_request, live.port, b"GET /health HTTP/1.1\r\nhost: x\r\n")
    try:
        for sock in (silent, partial):
            received, closed = await asyncio.to_thread(_read_to_end, sock, 3.0)
            assert (received, closed) == (b"", True)
    finally:
        silent.close()
        partial.close()
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health")).status_code == 200


async def test_a_client_that_leaves_before_its_body_was_sent_is_not_a_server_error(
    alice: Tenant, server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = (
        f"POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice.key}\r\n"
        "content-type: application/json\r\ncontent-length: 100\r\n\r\n"
    ).encode()
    sock = await asyncio.to_thread(_raw_request, server.port, head + b'{"meta')
    await asyncio.sleep(0.3)
    sock.close()

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "service.access" and "/v1/conversations" in r.getMessage()]

    for _ in range(100):
        if logged():
            break
        await asyncio.sleep(0.05)
    [line] = logged()
    assert (
        getattr(line, "fields", {})["status"] == 400
        and getattr(line, "fields", {})["error_code"] == "client_disconnected"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_keyed_request_whose_client_left_before_its_body_was_sent_is_not_a_server_error(
    alice: Tenant, server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The Idempotency-Key middleware reads the body itself: a client gone meanwhile (a timeout during a rolling
    restart, a process frozen while its request waited) ended it with nothing sent, which the access log and
    convstore_http_requests_total counted as a 500 of no tenant."""
    caplog.set_level(logging.INFO)
    head = (
        f"POST /v1/responses HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice.key}\r\n"
        "content-type: application/json\r\nidempotency-key: left-early\r\ncontent-length: 100\r\n\r\n"
    ).encode()
    sock = await asyncio.to_thread(_raw_request, server.port, head + b'{"mod')
    await asyncio.sleep(0.3)
    sock.close()

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "service.access" and "/v1/responses" in r.getMessage()]

    for _ in range(100):
        if logged():
            break
        await asyncio.sleep(0.05)
    [line] = logged()
    fields = getattr(line, "fields", {})
    assert (fields["status"], fields["error_code"], fields["tenant"]) == (400, "client_disconnected", "alice")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _exchange(port: int, sent: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """`sent` on a new connection; everything the server answered, and whether it closed within `timeout`."""
    sock = _raw_request(port, sent)
    try:
        return _read_to_end(sock, timeout)
    finally:
        sock.close()


async def test_headers_larger_than_any_client_sends_get_a_431_and_a_close(start_server: StartServer) -> None:
    live = start_server()
    filler = "".join(f"x-filler-{n}: {'v' * 100}\r\n" for n in range(700))  # about 80 KiB
    received, closed = await asyncio.to_thread(
        _exchange, live.port, f"GET /health HTTP/1.1\r\nhost: x\r\n{filler}".encode()
    )
    assert closed and received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_headers_too_large"
    fitting = "".join(f"x-filler-{n}: {'v' * 100}\r\n" for n in range(500))  # about 57 KiB
    answer, _ = await asyncio.to_thread(
        _exchange, live.port, f"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{fitting}\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    # Whole too large headers sent at once, which a read may take in one chunk: they were served.
    large = f"GET /health HTTP/1.1\r\nhost: x\r\n{filler}\r\n".encode()
    received, closed = await asyncio.to_thread(_exchange, live.port, large)
    assert closed and received.startswith(b"HTTP/1.1 431 "), received[:200]
    # Neither a large body that follows them nor the headers of several requests on one connection count.
    half = "".join(f"x-filler-{n}: {'v' * 100}\r\n" for n in range(350))  # about 40 KiB
    body = b"{" + b" " * 200_000 + b"}"
    requests = [
        f"POST /v1/conversations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{half}\r\n".encode()
        + body,
        f"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{half}\r\n".encode(),
    ]
    answers, _ = await asyncio.to_thread(_exchange, live.port, b"".join(requests))
    assert answers.startswith(b"HTTP/1.1 401 ") and b"HTTP/1.1 200 OK" in answers, answers[:300]
    # Counted as parsed too: neither a small request in front of large headers on the same connection nor a blank
    # line before them (which the raw count takes for their end) gets them through.
    for sent in (b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" + large, b"\r\n\r\n" + large):
        received, closed = await asyncio.to_thread(_exchange, live.port, sent)
        assert closed and b"HTTP/1.1 431 " in received, received[:300]
        assert received.count(b"HTTP/1.1 200 OK") <= 1


async def test_a_chunked_bodys_trailers_are_not_headers_and_cannot_grow_without_bound(
    start_server: StartServer, make_tenant: MakeTenant
) -> None:
    """uvicorn added a chunked body's trailers to the request's headers: an API key sent there authenticated a
    request no proxy saw carry one, and trailers were never counted, so a client could make the process hold a
    gigabyte of them."""
    live = start_server()
    tenant = await make_tenant("trailing", live=live)
    head = b"POST /v1/conversations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    chunked = b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    keyed_trailer = f"authorization: Bearer {tenant.key}\r\nconnection: close\r\n\r\n".encode()
    received, _ = await asyncio.to_thread(_exchange, live.port, head + chunked + keyed_trailer)
    assert received.startswith(b"HTTP/1.1 401 "), received[:300]
    # A trailer larger than any request may be: the connection is closed before the parser holds all of it.
    sock = await asyncio.to_thread(_raw_request, live.port, head + chunked + b"x-big: ")

    def send_a_huge_trailer() -> bool:
        piece = b"v" * (1 << 20)
        try:
            for _ in range(64):  # 64 MiB, past what one request may send (a body's 32 MiB and its headers)
                sock.sendall(piece)
        except OSError:
            return True  # closed by the server
        return _read_to_end(sock, 5.0)[1]

    try:
        assert await asyncio.to_thread(send_a_huge_trailer)
    finally:
        sock.close()
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health")).status_code == 200


async def test_a_body_that_pauses_or_trickles_is_closed_and_a_slow_steady_one_is_served(
    start_server: StartServer, make_tenant: MakeTenant, db: AsyncEngine
) -> None:
    """A body trickled in held its connection (a slot of MAX_CONNECTIONS) for as long as its client wished. A
    pause longer than HTTP_HEADER_TIMEOUT between two of its bytes now closes the connection, and so does a body
    that never pauses that long but averages less than MIN_BODY_RATE: one tenant sending a byte every few
    seconds on hundreds of connections, within its request rate, took every slot. A body that keeps up the rate,
    however long it takes in all, is served."""
    live = start_server(http_header_timeout=0.5)
    tenant = await make_tenant("trickle", live=live)
    body = b'{"metadata": {"topic": "slow"}, "items": [{"role": "user", "content": "%s"}]}' % (b"x" * 2000)

    def head(length: int, padding: str = "") -> bytes:
        return (
            f"POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {tenant.key}\r\n"
            f"content-type: application/json\r\ncontent-length: {length}\r\n{padding}\r\n"
        ).encode()

    stalled = await asyncio.to_thread(_raw_request, live.port, head(len(body)) + body[:5])
    try:
        received, closed = await asyncio.to_thread(_read_to_end, stalled, 3.0)
        assert closed and b"200 OK" not in received
    finally:
        stalled.close()

    def sent_in_pieces(piece: int, pause: float, padding: str = "") -> tuple[bytes, float]:
        """The body in pieces of `piece` bytes, `pause` seconds apart; the answer and when the server closed."""
        sock = _raw_request(live.port, head(len(body), padding))
        began = time.monotonic()
        try:
            for start in range(0, len(body), piece):
                time.sleep(pause)
                try:
                    sock.sendall(body[start : start + piece])
                except OSError:  # closed by the server
                    break
            return _read_to_end(sock, 1.0)[0], time.monotonic() - began
        finally:
            sock.close()

    # 10 bytes every 0.1 s (100 bytes a second), never 0.5 s quiet: closed once 0.5 s plus a second per
    # MIN_BODY_RATE bytes have passed, long before its 20 s end.
    trickled, took = await asyncio.to_thread(sent_in_pieces, 10, 0.1)
    assert b"200 OK" not in trickled and took < 5, (trickled[:200], took)
    # Headers sent with the body's start are not body: 30 KB of them bought a minute of trickling.
    padding = "".join(f"x-padding-{n}: {'p' * 100}\r\n" for n in range(280))
    trickled, took = await asyncio.to_thread(sent_in_pieces, 10, 0.1, padding)
    assert b"200 OK" not in trickled and took < 5, (trickled[:200], took)
    # 200 bytes every 0.1 s (2,000 a second): 1.1 s in all, served.
    answer, _ = await asyncio.to_thread(sent_in_pieces, 200, 0.1)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    stored = await rows(db, "SELECT metadata FROM conversation")
    assert stored == [{"metadata": {"topic": "slow"}}]
    assert MIN_BODY_RATE == 500  # the rates above are on either side of it


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/responses/resp_\x01 HTTP/1.1\r\nhost: x\r\n\r\n",  # a control character in the path
        b"GET /health HTTP/1.1\r\nhost: x\r\nx-bad: a\x00b\r\n\r\n",  # and in a header
        b"NOT A REQUEST\r\n\r\n",
    ],
)
async def test_a_request_the_http_parser_refuses_gets_a_400_in_openais_envelope(
    start_server: StartServer, request_bytes: bytes
) -> None:
    live = start_server()
    sock = await asyncio.to_thread(_raw_request, live.port, request_bytes)
    try:
        received, closed = await asyncio.to_thread(_read_to_end, sock, 3.0)
    finally:
        sock.close()
    assert closed
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head, received
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http_request")


async def test_past_max_connections_a_new_connection_gets_503_and_is_closed(start_server: StartServer) -> None:
    live = start_server(max_connections=3)
    held = [await asyncio.to_thread(_raw_request, live.port, b"") for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        extra = await asyncio.to_thread(_raw_request, live.port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        received, closed = await asyncio.to_thread(_read_to_end, extra, 3.0)
        extra.close()
        assert closed
        assert received.startswith(b"HTTP/1.1 503 ")
        assert b'"code":"too_many_connections"' in received
    finally:
        for sock in held:
            sock.close()
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("setting", ["TENANT_REQUESTS_PER_SECOND", "KEY_TURNS_IN_FLIGHT", "STREAM_WRITE_TIMEOUT"])
def test_limit_settings_refuse_bad_values(setting: str) -> None:
    from service.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=setting):
        Settings.from_env({setting: "-1"})


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("IDEMPOTENCY_KEY_TTL", "1e15", "IDEMPOTENCY_KEY_TTL must be at most 315360000"),
        ("TURN_LOCK_TTL", "1e13", "TURN_LOCK_TTL must be at most"),
        ("UPSTREAM_TOTAL_TIMEOUT", "1e12", "UPSTREAM_TOTAL_TIMEOUT must be at most"),
        ("CONSOLE_SESSION_HOURS", "1e12", "CONSOLE_SESSION_HOURS must be at most 87600"),
        ("WEBHOOK_RETRY_HOURS", "1e12", "WEBHOOK_RETRY_HOURS must be at most"),
        ("PROCESS_HEARTBEAT_TIMEOUT", "1e9", "PROCESS_HEARTBEAT_TIMEOUT must be at most"),
        ("ADMIN_API_KEY", "short", "ADMIN_API_KEY must be at least 16 characters"),
        # Taken as a number, it started worker processes until the machine's memory ran out.
        ("WORKERS", "1e15", "WORKERS must be at most"),
    ],
)
def test_settings_no_process_could_use_are_refused_at_start(setting: str, value: str, message: str) -> None:
    """A duration past ten years started a process whose every keyed request or conversation turn then failed
    with a 500 (an expiry past PostgreSQL's timestamps)."""
    from service.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        Settings.from_env({setting: value})
    assert Settings.from_env({"IDEMPOTENCY_KEY_TTL": "3.1536e8", "ADMIN_API_KEY": "x" * 16}).idempotency_key_ttl
    assert Settings.from_env({"WORKERS": "64"}).workers == 64


def test_a_turn_lock_ttl_a_turn_could_outlast_is_refused() -> None:
    from service.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"TURN_LOCK_TTL .* must be longer than UPSTREAM_TOTAL_TIMEOUT"):
        Settings.from_env({"TURN_LOCK_TTL": "300"})
    with pytest.raises(ConfigError, match="runs twice"):
        Settings.from_env({"TURN_LOCK_TTL": "60", "UPSTREAM_TOTAL_TIMEOUT": "60"})
    assert Settings.from_env({"TURN_LOCK_TTL": "61", "UPSTREAM_TOTAL_TIMEOUT": "60"}).turn_lock_ttl == 61
    assert Settings.from_env({"UPSTREAM_TOTAL_TIMEOUT": "2000"}).turn_lock_ttl == 2060


def _too_large(answer: httpx.Response, param: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "conversation_too_large", param)
    # The ways out that work: compaction stores one more item and deletes none.
    assert "Delete items" in error["message"] and "POST /v1/responses/compact answers" in error["message"]
    assert "Compact it" not in error["message"]


async def test_a_conversation_at_its_item_cap_takes_no_more_turns_or_items(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    live = start_server(max_conversation_items=3)
    alice = await make_tenant("alice", live=live)
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    for text in ("one", "two"):  # 0 + 1 <= 3, then 2 + 1 <= 3: each turn adds its input and an answer
        turn = await alice.http.post(
            "/v1/responses", json={"model": MODEL, "input": text, "conversation": conversation}
        )
        assert turn.status_code == 200, turn.text
    refused = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "three", "conversation": conversation}
    )
    _too_large(refused, "conversation")
    assert len(fake_upstream.requests) == 2, "the refused turn went upstream"
    [state] = await rows(db, "SELECT item_count, turn_response_id FROM conversation")
    assert state == {"item_count": 4, "turn_response_id": None}  # nothing appended, claim released
    failed = await rows(db, "SELECT status, error->>'code' AS code FROM response WHERE status = 'failed'")
    assert failed == [{"status": "failed", "code": "conversation_too_large"}]  # its input is kept, as for any failure
    item = {"type": "message", "role": "user", "content": "more"}
    _too_large(await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [item]}), "items")


async def test_a_conversation_at_its_byte_cap_takes_no_more_turns_or_items(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter
) -> None:
    live = start_server(max_conversation_bytes=3000)
    alice = await make_tenant("alice", live=live)
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    item = {"type": "message", "role": "user", "content": "x" * 1000}
    added = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [item, item]})
    assert added.status_code == 200, added.text
    _too_large(await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [item]}), "items")
    refused = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "y" * 1000, "conversation": conversation, "stream": True}
    )
    _too_large(refused, "conversation")
    assert fake_upstream.requests == []
    small = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "ok", "conversation": conversation})
    assert small.status_code == 200, small.text  # within the cap still


def _chain_too_large(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "conversation_too_large",
        "previous_response_id",
    )
    assert "MAX_CONVERSATION_" in error["message"] and "POST /v1/responses/compact" in error["message"]


async def test_a_chain_at_its_byte_cap_takes_no_more_turns(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A previous_response_id chain sends its whole history on every turn: the cap that bounds a conversation
    turn's memory bounds a chain turn's too (six chained turns of 30 MiB images each were taken, each sending
    the whole history upstream)."""
    live = start_server(max_conversation_bytes=3000)
    alice = await make_tenant("alice", live=live)

    async def continuing(previous: str, text: str, **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "input": text, "previous_response_id": previous, **extra}
        return await alice.http.post("/v1/responses", json=body)

    first = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "x" * 1000})).json()
    second = await continuing(first["id"], "y" * 1000)
    assert second.status_code == 200, second.text
    calls = len(fake_upstream.requests)
    before = await rows(db, "SELECT id FROM response ORDER BY id")
    for extra in ({}, {"stream": True}, {"background": True}, {"store": False}):
        _chain_too_large(await continuing(second.json()["id"], "z" * 1000, **extra))
    assert len(fake_upstream.requests) == calls, "a refused turn went upstream"
    # The plain turn, listed on its chain's row when refused, is stored as failed (as a conversation turn at
    # its cap is); the others were refused before anything was stored. None stays listed as running.
    after = await rows(db, "SELECT id, status, error->>'code' AS code FROM response ORDER BY id")
    new = [row for row in after if {"id": row["id"]} not in before]
    assert [(row["status"], row["code"]) for row in new] == [("failed", "conversation_too_large")]
    assert await rows(db, "SELECT id FROM response_chain WHERE cardinality(turn_response_ids) > 0") == []
    assert await rows(db, "SELECT response_id FROM running_chain_turn") == []
    # An earlier response, whose history is within the cap, is continued still.
    assert (await continuing(first["id"], "short")).status_code == 200


async def test_a_chain_at_its_item_cap_takes_no_more_turns(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter
) -> None:
    live = start_server(max_conversation_items=4)
    alice = await make_tenant("alice", live=live)
    previous = (await alice.http.post("/v1/responses", json={"model": MODEL, "input": "one"})).json()["id"]
    # Two items, then four: each turn adds its input and an answer.
    body = {"model": MODEL, "input": "two", "previous_response_id": previous}
    previous = (await alice.http.post("/v1/responses", json=body)).json()["id"]
    body = {"model": MODEL, "input": "three", "previous_response_id": previous}
    _chain_too_large(await alice.http.post("/v1/responses", json=body))
    assert len(fake_upstream.requests) == 2


async def test_a_keyed_request_beyond_the_rate_is_refused_before_its_key_is_looked_up(
    start_server: StartServer, make_tenant: MakeTenant, db: AsyncEngine
) -> None:
    live = start_server(tenant_requests_per_second=0.5, tenant_request_burst=2)
    alice = await make_tenant("alice", live=live)
    keyed = {"Idempotency-Key": "k-rate"}
    first = await alice.http.post("/v1/conversations", json={}, headers=keyed)
    assert first.status_code == 200
    assert (await alice.http.get("/v1/conversations/conv_x")).status_code == 404  # the burst is spent
    # Beyond the rate, the same key gets 429 rather than its replay: nothing read or claimed in the database.
    _rate_limited(await alice.http.post("/v1/conversations", json={}, headers=keyed))
    _rate_limited(await alice.http.post("/v1/conversations", json={}, headers={"Idempotency-Key": "k-new"}))
    assert [row["key"] for row in await rows(db, "SELECT key FROM idempotency_key")] == ["k-rate"]


async def test_max_conversation_bytes_zero_turns_the_cap_off_for_answers_too(
    start_server: StartServer, make_tenant: MakeTenant, fake_upstream: FakeOpenRouter
) -> None:
    # README: MAX_CONVERSATION_BYTES is "the same" as MAX_CONVERSATION_ITEMS, where `0` turns it off.
    live = start_server(max_conversation_bytes=0)
    alice = await make_tenant("alice", live=live)
    plain = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    assert plain.status_code == 200, plain.text
    streamed = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
    assert streamed.status_code == 200, streamed.text
    assert "response.completed" in streamed.text, streamed.text


async def test_a_conversation_is_not_created_beyond_its_caps(
    start_server: StartServer, make_tenant: MakeTenant, db: AsyncEngine
) -> None:
    live = start_server(max_conversation_items=2, max_conversation_bytes=1500)
    alice = await make_tenant("alice", live=live)
    item = {"type": "message", "role": "user", "content": "x"}
    _too_large(await alice.http.post("/v1/conversations", json={"items": [item, item, item]}), "items")
    big = {"type": "message", "role": "user", "content": "x" * 2000}
    _too_large(await alice.http.post("/v1/conversations", json={"items": [big]}), "items")
    assert await rows(db, "SELECT id FROM conversation") == []
    within = await alice.http.post("/v1/conversations", json={"items": [item, item]})
    assert within.status_code == 200, within.text
