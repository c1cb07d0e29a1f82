"""Debian's pgbouncer (1.18: no prepared statements in transaction mode) in front of a test database, started
and stopped by the test that needs it. Tests that need it skip, saying so, where it is not installed (`.ci/run`
installs it)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.fake_openrouter import free_port, wait_for_port

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
_UNPRIVILEGED = "postgres"
SKIP_REASON = (
    "pgbouncer is not installed (Debian package `pgbouncer`; .ci/run installs it): transaction-mode tests skipped"
)


def require_pgbouncer() -> str:
    if PGBOUNCER is None:
        pytest.skip(SKIP_REASON)
    return PGBOUNCER


def _let_others_through(socket_dir: Path) -> None:
    """The test's embedded server keeps its socket in root's private temp directories: let the unprivileged
    pgbouncer traverse them (search permission only; nothing becomes readable)."""
    for directory in (socket_dir, *socket_dir.parents):
        if directory == Path(tempfile.gettempdir()) or directory == directory.parent:
            break
        directory.chmod(directory.stat().st_mode | 0o001)


class PgBouncer:
    """pgbouncer in transaction mode on a loopback port, pooling the database of `database_url`."""

    def __init__(self, database_url: str, *, binary: str, pool_size: int = 10) -> None:
        self._database = make_url(database_url)
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="convstore-pgbouncer-"))
        self.port = free_port()
        self._pool_size = pool_size
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The database URL through pgbouncer."""
        query = {k: v for k, v in self._database.query.items() if k != "host"}
        return self._database.set(host="127.0.0.1", port=self.port, query=query).render_as_string(hide_password=False)

    def start(self) -> PgBouncer:
        name = self._database.database
        socket_dir = self._database.query.get("host")
        host = socket_dir if isinstance(socket_dir, str) else (self._database.host or "127.0.0.1")
        target = f"host={host} port={self._database.port or 5432} dbname={name} user={self._database.username}"
        if self._database.password:
            target += f" password={self._database.password}"
        (self._dir / "users.txt").write_text(f'"{self._database.username}" ""\n')
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{name} = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self._dir}\n"
            "auth_type = any\n"
            f"auth_file = {self._dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self._pool_size}\n"
            "max_client_conn = 1000\n"
            f"logfile = {self._dir / 'pgbouncer.log'}\n"
            f"pidfile = {self._dir / 'pgbouncer.pid'}\n"
            "admin_users = nobody\n"
        )
        command = [self._binary, str(config)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root; it switches to this user itself
            account = pwd.getpwnam(_UNPRIVILEGED)
            if isinstance(socket_dir, str):
                _let_others_through(Path(socket_dir))
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", _UNPRIVILEGED]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=10)
        return self

    def log(self) -> str:
        path = self._dir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        time.sleep(0.05)
        shutil.rmtree(self._dir, ignore_errors=True)
