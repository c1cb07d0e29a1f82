"""Running the application under uvicorn: "Serving on" once the port accepts connections, and a shutdown that
starts stopping running turns at the signal, so that it takes SHUTDOWN_GRACE_PERIOD and not as long as the
longest connected stream.

uvicorn stops on SIGTERM/SIGINT by first waiting for every open connection to close and only then running the
application's shutdown; a client following a stream keeps its connection open until the turn ends. So the
application watches the signal itself (`on_stop_signal`) and stops its turns then: their streams end with
their terminal event and the connections close within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from service.config import Settings
from service.limits.connections import uvicorn_options
from service.observability import metrics

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What uvicorn may still wait for after the grace period: turns being stored, connections closing.
_SHUTDOWN_MARGIN_SECONDS = 10.0


def on_stop_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` in the running loop when SIGTERM or SIGINT arrives, before uvicorn's own handler.
    Returns the function that restores the previous handlers. Does nothing outside the main thread (signals
    reach only the main thread; the tests run servers in threads and stop them directly)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in _STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return restore


def stop_with_supervisor(poll_seconds: float = 1.0) -> None:
    """In a worker (WORKERS > 1): shut down as on SIGTERM once the supervisor that started it is gone. Killed
    with SIGKILL, the supervisor could not stop its workers, which went on serving the port and beating as live
    processes: a restart then found the port taken. Nothing else tells a worker (uvicorn's health-check pipe has
    both its ends in the worker too), so its parent's pid is watched."""
    supervisor = os.getppid()

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class _AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, banner: Callable[[int], str]) -> None:
        super().__init__(config)
        self._banner = banner

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
            print(self._banner(bound), flush=True)


def serve(
    settings: Settings,
    *,
    app: str,
    access_log: bool,
    banner: Callable[[int], str],
    log_config: dict[str, Any] | None = None,
) -> bool:
    """Serve `app` (an import string of a factory); prints `banner` of the port it listens on (the one the kernel
    chose for PORT=0) once connections are accepted. False when the server could not start. `log_config`: the
    process' logging (service/observability/logs.py), which uvicorn applies again in each worker, its own loggers
    included."""
    config = uvicorn.Config(
        app,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=access_log,
        log_config=log_config if log_config is not None else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=int(settings.shutdown_grace_period + _SHUTDOWN_MARGIN_SECONDS),
        **uvicorn_options(settings),
    )
    if settings.workers == 1:
        server = _AnnouncingServer(config, banner)
        # uvicorn raises the signal it captured again once it has stopped: SIGTERM then ends the process as
        # an interrupt (exit status 0 after the clean shutdown), not by the default action.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
        return server.started
    # Several workers share a socket bound here: the kernel accepts connections from now on and queues them
    # until a worker takes them.
    sock = config.bind_socket()
    sock.listen(config.backlog)  # uvicorn's bind leaves that to each worker's server: until then, refused
    print(banner(sock.getsockname()[1]), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        _Supervisor(config, sockets=[sock]).run()
    return True


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, which also:
    - closes its copy of the listening socket when told to stop (each worker closes its own as its shutdown
      begins): held open, the kernel kept accepting connections no worker would take, and a balancer's health
      check or a new request hung for the whole grace period instead of being refused and sent elsewhere;
    - forgets a dead worker's live gauges (the in-flight turns and pool gauges sum the live processes' files,
      and a worker killed with turns in flight left them counted for good)."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                metrics.forget_process(pid)
