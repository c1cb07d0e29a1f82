"""A misbehaving upstream: retries before any byte reached the client (and only for retryable failures),
Retry-After, timeouts giving 504 with a stored failed response, and slow calls not blocking others."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import assert_whole_turns, scalar
from tests.turn_support import MODEL, new_conversation, rows


def upstream_error(status: int, message: str = "upstream trouble") -> dict[str, object]:
    return {"error": {"code": status, "message": message}}


async def test_flaky_upstream_that_succeeds_on_the_third_attempt_gives_one_success(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(upstream_error(502), status=502)
    fake_upstream.reply_json(upstream_error(503), status=503)
    fake_upstream.reply_json(text_response("Third time lucky.", msg_id="msg_lucky"))

    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "Hello?", "conversation": conversation}
    )

    assert answer.status_code == 200, answer.text
    assert answer.json()["output"][0]["id"] == "msg_lucky"
    assert len(fake_upstream.requests) == 3
    assert len({r.raw for r in fake_upstream.requests}) == 1, "every attempt must send the same body"
    completed = await assert_whole_turns(db, conversation)
    assert [r["id"] for r in completed] == [answer.json()["id"]]
    assert await scalar(db, "SELECT count(*) FROM response") == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 524, 529])
async def test_retryable_statuses_are_retried(alice: Tenant, fake_upstream: FakeOpenRouter, status: int) -> None:
    fake_upstream.reply_json(upstream_error(status), status=status)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 200, answer.text
    assert len(fake_upstream.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422])
async def test_final_statuses_are_never_retried(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, status: int
) -> None:
    conversation = await new_conversation(alice.http)
    fake_upstream.reply_json(upstream_error(status, "no"), status=status)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "conversation": conversation})
    assert answer.status_code == (502 if status == 401 else status)  # a 401 refused the service's own key
    assert len(fake_upstream.requests) == 1
    [stored] = await rows(db, "SELECT status, error FROM response")
    assert stored["status"] == "failed"
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 0
    assert await scalar(db, "SELECT turn_response_id FROM conversation") is None


async def test_a_cut_connection_before_any_byte_is_retried(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("x"), cut_after=0))
    fake_upstream.reply_json(text_response("After the cut."))
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 200, answer.text
    assert len(fake_upstream.requests) == 2


async def test_retries_are_bounded_then_502_and_a_stored_failed_response(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = await new_conversation(alice.http)
    for _ in range(5):
        fake_upstream.reply_json(upstream_error(500), status=500)
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "conversation": conversation})
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"
    assert len(fake_upstream.requests) == 3  # UPSTREAM_MAX_ATTEMPTS
    [stored] = await rows(db, "SELECT status, error FROM response")
    assert stored["status"] == "failed"
    assert stored["error"]["code"] == "server_error"
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 0


async def test_max_attempts_is_configurable(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
) -> None:
    carol = await make_tenant("carol", live=start_server(upstream_max_attempts=5))
    for _ in range(4):
        fake_upstream.reply_json(upstream_error(503), status=503)
    answer = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 200
    assert len(fake_upstream.requests) == 5


async def test_429_retry_after_is_honoured(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.reply_json(upstream_error(429, "slow down"), status=429, headers={"Retry-After": "1"})
    started = time.monotonic()
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert len(fake_upstream.requests) == 2
    assert elapsed >= 0.95, "the retry came before Retry-After"


async def test_retry_after_is_capped_and_a_final_429_keeps_its_status(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    for _ in range(3):
        fake_upstream.reply_json(upstream_error(429, "slow down"), status=429, headers={"Retry-After": "120"})
    started = time.monotonic()
    answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    elapsed = time.monotonic() - started
    assert elapsed < 5, "Retry-After must be capped by UPSTREAM_RETRY_MAX_WAIT (1 s in tests)"
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert answer.headers["retry-after"] == "120"
    assert len(fake_upstream.requests) == 3
    assert await scalar(db, "SELECT error->>'code' FROM response") == "rate_limit_exceeded"


async def test_stalled_upstream_gives_504_and_a_stored_failed_response(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    carol = await make_tenant("carol", live=start_server(upstream_first_byte_timeout=0.5))
    conversation = (await carol.http.post("/v1/conversations", json={})).json()["id"]
    fake_upstream.enqueue(Reply(kind="stall", delay=5))
    started = time.monotonic()
    answer = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "Hi", "conversation": conversation})
    assert time.monotonic() - started < 3
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    [stored] = await rows(db, "SELECT status, error FROM response")
    assert stored["status"] == "failed"
    assert await scalar(db, "SELECT turn_response_id FROM conversation") is None
    assert await scalar(db, "SELECT count(*) FROM item WHERE conversation_id = :c", c=conversation) == 0


async def test_total_timeout_covers_a_slow_answer(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    carol = await make_tenant("carol", live=start_server(upstream_total_timeout=0.7))
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Too late."), delay=3))
    answer = await carol.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert answer.status_code == 504
    assert await scalar(db, "SELECT status FROM response") == "failed"


async def test_one_slow_upstream_call_does_not_block_others(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Slow."), delay=3))
    slow = asyncio.create_task(alice.http.post("/v1/responses", json={"model": MODEL, "input": "slow"}))
    await fake_upstream.received()
    started = time.monotonic()
    fast = await asyncio.gather(
        *(alice.http.post("/v1/responses", json={"model": MODEL, "input": f"fast {n}"}) for n in range(12))
    )
    assert all(a.status_code == 200 for a in fast)
    assert time.monotonic() - started < 2.5
    assert not slow.done()
    assert (await slow).status_code == 200


async def test_an_answer_cut_after_its_headers_leaves_no_connection_open(
    alice: Tenant, fake_upstream: FakeOpenRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt whose body broke off is retried; its connection must be given back, not left for the garbage
    collector to find (aiohttp then logs `Unclosed connection` at ERROR, and the socket stays open until then)."""
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(caplog.handler)
    try:
        fake_upstream.enqueue(Reply(status=200, body=text_response("lost"), cut_after=0))
        fake_upstream.reply_json(text_response("After the cut."))
        answer = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
        assert answer.status_code == 200, answer.text
        assert len(fake_upstream.requests) == 2
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        asyncio_logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()] == []
