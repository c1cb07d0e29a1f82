"""`serve` as a real process: "Serving on" is printed once the port accepts connections, and SIGTERM with a
client following a stream stops within SHUTDOWN_GRACE_PERIOD, the running turn stored as failed and its stream
ended with `response.failed`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from service.gc_freeze import THRESHOLDS
from service.keys import service as keys
from tests.conftest import LiveServer
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import ServiceProcess, client_for
from tests.turn_support import MODEL, new_conversation, rows


async def conversation_claim(db: AsyncEngine, conversation: str) -> str | None:
    [row] = await rows(db, "SELECT turn_response_id FROM conversation WHERE id = :c", c=conversation)
    return row["turn_response_id"]  # type: ignore[no-any-return]


@pytest.fixture
def service_process(database_url: str, fake_upstream: FakeOpenRouter) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def make(**env: str) -> ServiceProcess:
        process = ServiceProcess(database_url, fake_upstream.base_url, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def test_serving_on_is_printed_once_the_port_accepts_connections(
    service_process: Callable[..., ServiceProcess],
) -> None:
    process = service_process(LOG_LEVEL="INFO")
    process.start_without_waiting()
    deadline = time.monotonic() + 60
    while "Serving on" not in process.log_path.read_text():
        assert process.process is not None and process.process.poll() is None, process.log_path.read_text()
        assert time.monotonic() < deadline, "no 'Serving on' within 60 s"
        time.sleep(0.01)
    # At once, no retry: the port accepts.
    with socket.create_connection(("127.0.0.1", process.port), timeout=1):
        pass


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_0_serves_on_a_free_port_and_says_which(
    service_process: Callable[..., ServiceProcess], workers: str
) -> None:
    """The banner named port 0, where nothing listens."""
    process = service_process(PORT="0", WORKERS=workers)
    process.start_without_waiting()
    deadline = time.monotonic() + 60
    while (found := re.search(r"Serving on http://127\.0\.0\.1:(\d+) ", process.log_path.read_text())) is None:
        assert process.process is not None and process.process.poll() is None, process.log_path.read_text()
        assert time.monotonic() < deadline, "no 'Serving on' within 60 s"
        time.sleep(0.05)
    port = int(found.group(1))
    assert port != 0
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


async def test_sigterm_with_a_connected_stream_stops_within_the_grace_period(
    service_process: Callable[..., ServiceProcess], fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    grace = 1.0
    process = service_process(SHUTDOWN_GRACE_PERIOD=str(grace))
    await asyncio.to_thread(process.start)
    key = await keys.create_key(db, tenant="sigrid")
    # A stream that would last 20 s.
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("word " * 40, chunks=40), delay=0.5))
    async with client_for(process.url, key.secret) as client:
        conv = await new_conversation(client)
        body: dict[str, Any] = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True}
        events: list[dict[str, Any]] = []
        signalled = 0.0
        async with client.stream("POST", "/v1/responses", json=body) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                if len(events) == 4 and not signalled:
                    assert process.process is not None
                    signalled = time.monotonic()
                    process.process.send_signal(signal.SIGTERM)
        assert process.process is not None
        exit_code = await asyncio.to_thread(process.process.wait, 30)
        stopped_after = time.monotonic() - signalled
    assert exit_code == 0, process.log_path.read_text()
    assert stopped_after < grace + 3, f"stopped {stopped_after:.1f}s after SIGTERM"
    assert events[-1]["type"] == "response.failed"
    # Said in the log, as for non-streamed turns: the turn was stored failed because the grace period ended.
    assert "stopped 1 streamed or background turn(s) still running at the end of the grace period" in (
        process.log_path.read_text()
    )
    response_id = events[0]["response"]["id"]
    [row] = await rows(db, "SELECT status, error FROM response WHERE id = :r", r=response_id)
    assert row["status"] == "failed" and row["error"]["message"] == "The turn was interrupted before it finished"
    [conversation] = await rows(db, "SELECT turn_response_id, item_count FROM conversation WHERE id = :c", c=conv)
    assert conversation == {"turn_response_id": None, "item_count": 0}


def test_start_up_objects_are_out_of_the_garbage_collectors_reach(server: LiveServer) -> None:
    # What start-up made is frozen (service/gc_freeze.py): a full collection scans only what came after.
    assert gc.get_freeze_count() > 10_000
    started_with = gc.get_freeze_count()
    gc.collect()
    # A collection leaves them frozen; only their reference counts free some meanwhile (a few, not the lot).
    assert started_with - 1_000 < gc.get_freeze_count() <= started_with
    assert gc.get_threshold() == THRESHOLDS  # and the collector runs less often


async def test_sigterm_stops_a_plain_turn_at_the_grace_period_with_a_503_in_the_envelope(
    service_process: Callable[..., ServiceProcess], fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """A non-streamed turn still waiting upstream at SIGTERM used to run on until the server's own timeout (the
    grace period and 10 s more), which then cut it with a bare text/plain 500."""
    grace = 1.0
    process = service_process(SHUTDOWN_GRACE_PERIOD=str(grace))
    await asyncio.to_thread(process.start)
    key = await keys.create_key(db, tenant="stopper")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Never delivered."), delay=30.0))
    async with client_for(process.url, key.secret) as client:
        conv = await new_conversation(client)
        waiting = asyncio.create_task(
            client.post("/v1/responses", json={"model": MODEL, "input": "hi", "conversation": conv})
        )
        for _ in range(200):
            if fake_upstream.requests:
                break
            await asyncio.sleep(0.05)
        assert process.process is not None
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        answer = await waiting
        answered_after = time.monotonic() - signalled
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]["code"] == "service_unavailable"
    assert answered_after < grace + 3, f"answered {answered_after:.1f}s after SIGTERM"
    assert await asyncio.to_thread(process.process.wait, 30) == 0, process.log_path.read_text()
    stored = await rows(db, "SELECT status, error FROM response WHERE conversation_id = :c", c=conv)
    assert [(row["status"], row["error"]["code"]) for row in stored] == [("failed", "server_error")]
    assert (await conversation_claim(db, conv)) is None


async def test_a_key_whose_request_was_cut_by_a_clean_stop_is_free_for_a_retry(
    service_process: Callable[..., ServiceProcess], fake_upstream: FakeOpenRouter, start_server: Any, db: AsyncEngine
) -> None:
    """A keyed plain turn still waiting for its answer when its process gets SIGTERM: the turn is stored as
    interrupted, and the key, which holds no answer, is freed at the stop; a retry on another process runs the
    turn rather than getting 409 idempotency_key_in_use until the key's held_until (TURN_LOCK_TTL)."""
    process = service_process(SHUTDOWN_GRACE_PERIOD="1")
    await asyncio.to_thread(process.start)
    other = start_server()
    key = await keys.create_key(db, tenant="sigrid")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Never delivered."), delay=30.0))
    fake_upstream.enqueue(Reply(kind="json", body=text_response("Answered on the retry.")))
    keyed = {"Idempotency-Key": "cut-at-stop"}
    async with client_for(process.url, key.secret) as on_a, client_for(other.url, key.secret) as on_b:
        conv = await new_conversation(on_a)
        request = {"model": MODEL, "input": "hi", "conversation": conv}
        first = asyncio.create_task(on_a.post("/v1/responses", json=request, headers=keyed))
        for _ in range(200):
            if fake_upstream.requests:
                break
            await asyncio.sleep(0.05)
        [held] = await rows(db, "SELECT state FROM idempotency_key WHERE key = 'cut-at-stop'")
        assert held == {"state": "in_progress"}
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.process.wait, 30) == 0, process.log_path.read_text()
        with contextlib.suppress(httpx.HTTPError):
            await first
        assert await rows(db, "SELECT state FROM idempotency_key WHERE key = 'cut-at-stop'") == []
        # The conversation is free once the cut turn is stored as interrupted or, if the shutdown cut that too,
        # once the other process's reaper frees the claim of a stopped process; meanwhile 409 conversation_locked,
        # never idempotency_key_in_use.
        deadline = time.monotonic() + 30
        while True:
            retried = await on_b.post("/v1/responses", json=request, headers=keyed)
            if retried.status_code != 409:
                break
            assert retried.json()["error"]["code"] == "conversation_locked", retried.text
            assert time.monotonic() < deadline, "the conversation was never freed"
            await asyncio.sleep(0.2)
    assert retried.status_code == 200, retried.text
    assert retried.json()["output"][0]["content"][0]["text"] == "Answered on the retry."
    assert len(fake_upstream.requests) == 2
    stored = await rows(db, "SELECT status FROM response WHERE conversation_id = :c ORDER BY created_at", c=conv)
    assert [row["status"] for row in stored][-1:] == ["completed"]
    assert all(row["status"] == "failed" for row in stored[:-1])


async def _first_event(stream: httpx.Response) -> None:
    async for line in stream.aiter_lines():
        if line.startswith("data: "):
            return


async def test_with_several_workers_sigterm_refuses_new_connections_at_once(
    service_process: Callable[..., ServiceProcess], fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The supervisor held its copy of the listening socket while its workers drained: the kernel kept accepting
    connections no worker would take, and a balancer's health check or a new request hung for the whole grace
    period rather than being refused (and sent to another instance), as with one worker."""
    process = service_process(WORKERS="2", SHUTDOWN_GRACE_PERIOD="5")
    await asyncio.to_thread(process.start)
    key = await keys.create_key(db, tenant="deployer")
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("word " * 40, chunks=40), delay=0.5))
    async with client_for(process.url, key.secret) as client:
        conv = await new_conversation(client)
        body: dict[str, Any] = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True}
        async with client.stream("POST", "/v1/responses", json=body) as stream:
            await _first_event(stream)  # a turn runs: its worker drains for up to the grace period
            assert process.process is not None
            process.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.5)
            with pytest.raises(httpx.ConnectError):
                await asyncio.to_thread(httpx.get, process.url + "/health", timeout=3)
    assert await asyncio.to_thread(process.process.wait, 30) == 0


def _runs_in_flight(url: str, admin_key: str) -> float | None:
    try:
        answer = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=2)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    families = text_string_to_metric_families(answer.text)
    return sum(s.value for f in families if f.name == "convstore_runs_in_flight" for s in f.samples)


async def test_a_fresh_process_reports_zero_for_the_outcomes_alerts_watch(
    service_process: Callable[..., ServiceProcess],
) -> None:
    """Before its first failure, a series an alert reads (`rate(convstore_turns_total{outcome="failed"}[5m])`)
    must exist at 0, else the alert sees no data; with several workers too, whose values come from files."""
    admin_key = "metrics-test-admin-key-0123"
    process = service_process(WORKERS="2", ADMIN_API_KEY=admin_key)
    await asyncio.to_thread(process.start)
    answer = await asyncio.to_thread(
        httpx.get, process.url + "/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    expected = [
        *(("convstore_turns_total", ("outcome", o)) for o in ("completed", "incomplete", "failed", "cancelled")),
        *(("convstore_runs_in_flight", ("kind", k)) for k in ("stream", "background")),
        *(("convstore_retention_runs_total", ("outcome", o)) for o in ("ok", "lease_lost")),
        *(("convstore_retention_deleted_total", ("kind", k)) for k in ("conversations", "responses", "items")),
        *(("convstore_webhook_attempts_total", ("outcome", o)) for o in ("delivered", "retrying", "failed")),
    ]
    for name, label in expected:
        assert found.get((name, (label,))) == 0.0, (name, label)
    upstream_errors = [
        *((kind, "none") for kind in ("connect", "timeout", "protocol", "stream")),
        *(("http", status) for status in ("401", "402", "429", "500", "502", "503")),
    ]
    for kind, status in upstream_errors:
        labels = (("kind", kind), ("status", status))
        assert found.get(("convstore_upstream_errors_total", labels)) == 0.0, labels


async def test_a_killed_workers_turns_leave_the_in_flight_gauges(
    service_process: Callable[..., ServiceProcess], fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Gauges sum the live workers' files: a worker killed with turns in flight left them counted for good,
    as nothing told prometheus_client the process was dead."""
    admin_key = "metrics-test-admin-key-0123"
    process = service_process(WORKERS="2", ADMIN_API_KEY=admin_key)
    await asyncio.to_thread(process.start)
    key = await keys.create_key(db, tenant="crasher")
    for _ in range(2):
        fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("word " * 60, chunks=60), delay=0.5))
    async with client_for(process.url, key.secret) as client:
        streams = []
        for _ in range(2):
            conv = await new_conversation(client)
            body: dict[str, Any] = {"model": MODEL, "input": "hi", "conversation": conv, "stream": True}
            stream = await client.send(client.build_request("POST", "/v1/responses", json=body), stream=True)
            await _first_event(stream)
            streams.append(stream)
        assert await asyncio.to_thread(_runs_in_flight, process.url, admin_key) == 2
        assert process.process is not None
        workers = psutil.Process(process.process.pid).children()
        workers = [w for w in workers if "spawn_main" in " ".join(w.cmdline())]
        assert len(workers) == 2
        for worker in workers:
            worker.kill()
        for stream in streams:
            with contextlib.suppress(httpx.HTTPError):
                await stream.aclose()
    deadline = time.monotonic() + 30
    while (counted := await asyncio.to_thread(_runs_in_flight, process.url, admin_key)) != 0:
        assert time.monotonic() < deadline, f"convstore_runs_in_flight still {counted}"
        await asyncio.sleep(0.2)


async def test_workers_stop_when_their_supervisor_is_killed(
    service_process: Callable[..., ServiceProcess], db: AsyncEngine, tmp_path: Path
) -> None:
    """SIGKILL of the supervisor (WORKERS > 1) left its workers serving the port and beating as live processes,
    so a restart found the port taken. They now shut down as on SIGTERM, and another start can take the port.
    (The metrics directory is the test's: one the killed supervisor made would stay behind.)"""
    process = service_process(WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    await asyncio.to_thread(process.start)
    assert process.process is not None
    workers = [w for w in psutil.Process(process.process.pid).children() if "spawn_main" in " ".join(w.cmdline())]
    assert len(workers) == 2
    process.process.kill()
    await asyncio.to_thread(process.process.wait, 10)
    gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 20)
    assert alive == [] and len(gone) == 2
    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, process.url + "/health", timeout=3)
    stopped = await rows(db, "SELECT pid FROM service_process WHERE stopped_at IS NOT NULL")
    assert {w.pid for w in workers} <= {row["pid"] for row in stopped}
