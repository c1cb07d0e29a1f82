"""`serve` on the embedded PostgreSQL, as a newcomer runs it: first start prints a key that works, SIGTERM stops
the database too, data survives a restart, and no secret reaches the logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.cli_support import ROOT, cli_env
from tests.fake_openrouter import FakeOpenRouter, free_port


def _wait_ready(url: str, timeout: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} was not ready within {timeout}s")


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("name") == "postgres" and str(data_dir) in cmdline:
            found.append(proc)
    return found


def _start(data_dir: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--access-log"],
        cwd=ROOT,
        env=cli_env(DATA_DIR=str(data_dir), PORT=str(port), LOG_LEVEL="DEBUG", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=30)
    return output


def test_first_start_key_restart_and_clean_shutdown(tmp_path: Path, fake_upstream: FakeOpenRouter) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    openrouter_secret = "sk-or-v1-never-log-this-0123456789"
    env = {"OPENROUTER_API_KEY": openrouter_secret, "OPENROUTER_BASE_URL": fake_upstream.base_url}

    proc = _start(data_dir, port, **env)
    try:
        _wait_ready(url, timeout=60)
        auth_line = None
        conv_id = None
        # The key was printed before "Serving on"; read what has been printed so far.
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        time.sleep(0.2)
        early = proc.stdout.read() or ""  # type: ignore[union-attr]
        os.set_blocking(proc.stdout.fileno(), True)  # type: ignore[union-attr]
        secret = next(line.strip() for line in early.splitlines() if line.strip().startswith("sk-cs-"))
        # The example names the port served on (printed with "Serving on": with PORT=0 it named port 0).
        assert f"Try: curl -s http://127.0.0.1:{port}/v1/responses" in early
        assert early.index("Try: curl") < early.index("Serving on")
        auth_line = {"Authorization": f"Bearer {secret}"}
        conv = httpx.post(url + "/v1/conversations", json={"metadata": {"k": "v"}}, headers=auth_line)
        assert conv.status_code == 200, conv.text
        conv_id = conv.json()["id"]
        turn = httpx.post(
            url + "/v1/responses", json={"model": "m", "input": "hi", "conversation": conv_id}, headers=auth_line
        )
        assert turn.status_code == 200, turn.text
        assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {openrouter_secret}"
        assert _postgres_processes(data_dir), "the embedded server should be running"
    finally:
        later = _stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, later
    time.sleep(0.5)
    assert _postgres_processes(data_dir) == [], "SIGTERM must stop the embedded PostgreSQL too"
    # Secrets never reach the logs: after the one-time banner, neither key appears anywhere.
    assert secret not in later
    assert openrouter_secret not in early + later

    initialized = (data_dir / "postgres" / "PG_VERSION").stat()
    proc = _start(data_dir, port, **env)
    try:
        # Speed is the benchmarks' to judge, not a test's timer: a restart reuses the cluster initdb made.
        _wait_ready(url, timeout=30)
        reused = (data_dir / "postgres" / "PG_VERSION").stat()
        assert (reused.st_ino, reused.st_mtime_ns) == (initialized.st_ino, initialized.st_mtime_ns)
        again = httpx.get(url + f"/v1/conversations/{conv_id}", headers=auth_line)
        assert again.status_code == 200
        assert again.json()["metadata"] == {"k": "v"}
        items = httpx.get(url + f"/v1/conversations/{conv_id}/items", headers=auth_line).json()
        assert len(items["data"]) == 2
    finally:
        restarted_output = _stop(proc, signal.SIGINT)
    assert "sk-cs-" not in restarted_output, "no new key is created once keys exist"
    assert proc.returncode == 0
    time.sleep(0.5)
    assert _postgres_processes(data_dir) == []


def test_a_stopped_embedded_server_writes_nothing_at_exit_into_its_removed_directory(tmp_path: Path) -> None:
    """`make test` runs on an embedded server in a temporary directory it removes at the end: the process's exit
    must not create files there again (each run would leave a directory behind)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)  # as mkdtemp makes it: so the server's lock file lives in it (XDG_RUNTIME_DIR)
    script = (
        "import shutil, sys\n"
        "from pathlib import Path\n"
        "from service.db.embedded import EmbeddedPostgres\n"
        "server = EmbeddedPostgres(Path(sys.argv[1]))\n"
        "server.start()\n"
        "server.stop()\n"
        "shutil.rmtree(sys.argv[1])\n"
    )
    # Unset, as when `make run` starts: the server then keeps its lock file in its data directory.
    env = {k: v for k, v in cli_env().items() if k != "XDG_RUNTIME_DIR"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()
    assert not data_dir.exists(), sorted(str(p) for p in data_dir.rglob("*"))


def test_after_a_killed_process_the_next_one_still_stops_the_server_at_its_exit(
    tmp_path: Path, fake_upstream: FakeOpenRouter
) -> None:
    """The embedded server is stopped by the last process on its list to exit; a killed one stayed on that list,
    so after one `kill -9` no later `make run` stopped it at Ctrl-C (a server left running for each data dir)."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {"OPENROUTER_BASE_URL": fake_upstream.base_url, "OPENROUTER_API_KEY": "sk-or-test"}
    killed = _start(data_dir, port, **env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", timeout=60)
    finally:
        killed.kill()
        killed.communicate(timeout=30)
    try:
        assert _postgres_processes(data_dir), "a killed process cannot stop its server"
        for sig in (signal.SIGINT, signal.SIGTERM):
            proc = _start(data_dir, port, **env)
            try:
                _wait_ready(f"http://127.0.0.1:{port}", timeout=60)
            finally:
                output = _stop(proc, sig)
            assert proc.returncode == 0, output
            deadline = time.monotonic() + 10
            while _postgres_processes(data_dir):
                assert time.monotonic() < deadline, f"the embedded PostgreSQL outlived its last process ({sig!r})"
                time.sleep(0.2)
    finally:
        for left in _postgres_processes(data_dir):  # not to outlive a failed run
            left.kill()
