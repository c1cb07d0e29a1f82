"""The processes under test, all on loopback: the fake upstream and the service (`python -m service serve`),
each a subprocess so that its CPU and memory can be read apart from the load generator's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from service.config import normalize_database_url
from service.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # loopback only
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s; see {log}")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}; see {log}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout:.0f}s; see {log}")


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_fake_upstream(log_dir: Path, *, latency_ms: float = 0.0) -> Process:
    port = free_port()
    log = log_dir / f"fake_upstream_{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_upstream", "--port", str(port), "--latency-ms", str(latency_ms)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_for_port(port, process, 15, log)
    return Process("fake_upstream", process, port, log)


@dataclass
class Service(Process):
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: uvicorn's spawned workers, or the main process when it serves
        alone."""
        main = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [main]
        workers = []
        for child in main.children(recursive=False):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child)
            except psutil.Error:
                continue
        return workers

    def rss_mib(self) -> list[float]:
        return [p.memory_info().rss / 2**20 for p in self.worker_processes()]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.worker_processes():
            times = p.cpu_times()
            total += times.user + times.system
        return total


# The bench measures one tenant's throughput: per-tenant rates and turn caps (bench/hostile_load.py measures
# those) would refuse most of it.
LIMITS_OFF = {"TENANT_REQUESTS_PER_SECOND": "0", "TENANT_TURNS_IN_FLIGHT": "0", "UPSTREAM_TENANT_SHARE": "1"}


def start_service(
    log_dir: Path,
    *,
    database_url: str,
    upstream_port: int,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> Service:
    """`command` replaces `python -m service serve` (for the variants in bench/experiments/variant_server.py)."""
    port = free_port()
    log = log_dir / f"service_{port}.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": HOST,
        "PORT": str(port),
        "OPENROUTER_API_KEY": "bench",
        "OPENROUTER_BASE_URL": f"http://{HOST}:{upstream_port}/api/v1",
        "WORKERS": str(workers),
        "AUTO_MIGRATE": "true",
        "LOG_LEVEL": "WARNING",
        # A bench turn must never be retried behind our back: a retry would hide a failure in the figures.
        "UPSTREAM_MAX_ATTEMPTS": "1",
        **LIMITS_OFF,
        **(extra_env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command or [sys.executable, "-m", "service", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service("service", process, port, log, workers=workers, extra_env=extra_env or {})
    try:
        _wait_for(f"{service.base}/health", process, 60, log)
        if workers > 1:
            # Every worker must be up before measuring; each answers /health once it is.
            deadline = time.monotonic() + 30
            while len(service.worker_processes()) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
    except BaseException:
        service.stop()
        raise
    return service


def on_database(database_url: str | None, temp_prefix: str, run: Callable[[str], int]) -> int:
    """`run(url)` on the named database, migrated to head, else on an embedded PostgreSQL in a temporary
    directory, removed afterwards."""
    if database_url:
        url = normalize_database_url(database_url)
        upgrade(url)
        return run(url)
    from service.db.embedded import EmbeddedPostgres  # noqa: PLC0415 - only without a named database

    data_dir = Path(tempfile.mkdtemp(prefix=temp_prefix))
    server = EmbeddedPostgres(data_dir)
    try:
        url = server.start()
        upgrade(url)
        return run(url)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
