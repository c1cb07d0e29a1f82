"""Helpers for the reliability tests: polling, stored-row checks, the service as a real separate process, and a
private PostgreSQL that a test may stop and start (never the machine's shared one)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.migrate import PROJECT_ROOT
from tests.fake_openrouter import _free_port

MODEL = "openai/gpt-4o"


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    async with db.connect() as conn:
        return await conn.scalar(text(sql), params)


async def requests_waiting_on_a_lock(db: AsyncEngine) -> int:
    """How many of the service's database sessions wait on a row lock (a test holds one to pause a request)."""
    count = await scalar(
        db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'convstore' AND wait_event_type = 'Lock'"
    )
    return int(count or 0)


async def a_request_waits_on_a_lock(db: AsyncEngine) -> None:
    async def waiting() -> bool:
        return await requests_waiting_on_a_lock(db) > 0

    await eventually(waiting)


async def rows(db: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def assert_whole_turns(db: AsyncEngine, conversation_id: str) -> list[dict[str, Any]]:
    """Positions are 0..n-1, and each completed turn's inputs then outputs sit together, in order, exactly once;
    a failed turn appended nothing. Returns the completed responses, oldest first."""
    items = await rows(
        db,
        "SELECT position, response_id, is_output, ordinal FROM item WHERE conversation_id = :c ORDER BY position",
        c=conversation_id,
    )
    assert [i["position"] for i in items] == list(range(len(items)))
    responses = await rows(
        db,
        "SELECT id, status, conversation_position FROM response WHERE conversation_id = :c "
        "ORDER BY conversation_position, created_at",
        c=conversation_id,
    )
    by_response: dict[str, list[tuple[bool, int]]] = {}
    order: list[str] = []
    for item in items:
        rid = item["response_id"]
        if rid is None:
            continue
        if rid not in by_response:
            order.append(rid)
            by_response[rid] = []
        elif order[-1] != rid:
            raise AssertionError(f"items of {rid} are interleaved with another turn's")
        by_response[rid].append((item["is_output"], item["ordinal"]))
    for rid, keys in by_response.items():
        assert keys == sorted(keys), f"items of {rid} out of order"
    completed = [r for r in responses if r["status"] == "completed"]
    assert order == [r["id"] for r in completed], "completed turns and appended turns differ"
    for response in responses:
        assert response["status"] != "in_progress" or response["id"] not in by_response
        if response["status"] == "failed":
            assert response["id"] not in by_response
    return completed


class ServiceProcess:
    """`python -m service serve` as its own OS process on a loopback port."""

    def __init__(self, database_url: str, upstream_url: str, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="convstore-proc-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "AUTO_MIGRATE": "false",
            "OPENROUTER_API_KEY": "x",
            "OPENROUTER_BASE_URL": upstream_url,
            "UPSTREAM_RETRY_BASE_DELAY": "0.02",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service process exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service process not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no cleanup, like a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def client_for(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
