"""What a hung test waits on. faulthandler (pyproject's faulthandler_timeout) shows threads, and a hung async test's
thread shows only its event loop waiting; this shows every task of the test's loop and of each live server's loop,
each with the frames it awaits in. pytest-timeout (pyproject's `timeout`) then fails the test, so the run goes on."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pytest
import uvicorn

# Before pytest-timeout fails the test, so the report comes while everything still waits.
REPORT_AFTER_SECONDS = 240.0

_server_loops: dict[int, asyncio.AbstractEventLoop] = {}
_lock = threading.Lock()


class ReportedServer(uvicorn.Server):
    """A uvicorn server whose event loop the report can find."""

    async def serve(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        with _lock:
            _server_loops[id(self)] = loop
        try:
            await super().serve(sockets)
        finally:
            with _lock:
                _server_loops.pop(id(self), None)


def _tasks_of(loop: asyncio.AbstractEventLoop, title: str) -> str:
    out = io.StringIO()
    try:
        tasks = asyncio.all_tasks(loop)
    except RuntimeError as exc:  # another thread's loop changed its tasks while we read them
        return f"== {title}: could not list tasks ({exc})\n"
    out.write(f"== {title}: {len(tasks)} tasks\n")
    for task in tasks:
        out.write(f"-- {task.get_name()}\n")
        for line in _awaiting(task.get_coro()):
            out.write(f"   {line}\n")
    return out.getvalue()


def _awaiting(coro: Any) -> list[str]:
    """Where the coroutine is, then where what it awaits is, down to the innermost await: Task.print_stack shows
    only the task's own frame."""
    lines = []
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        else:
            lines.append(repr(coro))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return lines


def report(config: pytest.Config, test: str, loop: asyncio.AbstractEventLoop) -> None:
    with _lock:
        servers = list(_server_loops.values())
    text = _tasks_of(loop, f"{test} still running after {REPORT_AFTER_SECONDS:.0f} s: the test's loop")
    for number, server_loop in enumerate(servers):
        text += _tasks_of(server_loop, f"live server {number}")
    # Past pytest's capture, as pytest-timeout writes its own report: a run killed from outside still shows it.
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    try:
        config.get_terminal_writer().write("\n" + text + "\n", flush=True)
    finally:
        if capture is not None:
            capture.resume_global_capture()
