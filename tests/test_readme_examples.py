"""The README's examples, run as a reader would paste them: the curl session and every Python block in order, in
one namespace (later blocks use the earlier ones' `client`), against the service with its offline demo upstream.
Only the address and the key are put in: anything else a reader would have to change is a bug in the README."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.upstream.demo import DemoTransport
from tests.conftest import LiveServer, Tenant

README = Path(__file__).resolve().parent.parent / "README.md"
README_ADDRESSES = ("http://127.0.0.1:8000", "localhost:8000")
# A fenced block, indented or not (the offline examples sit in a list): its language and its lines.
_BLOCK = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w+)\n(?P<body>.*?)^(?P=indent)```$", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    found = []
    for match in _BLOCK.finditer(README.read_text()):
        if match["lang"] == language:
            indent = len(match["indent"])
            found.append("".join(line[indent:] for line in match["body"].splitlines(keepends=True)))
    return found


def _at(text: str, url: str) -> str:
    for address in README_ADDRESSES:
        text = text.replace(address, url)
    return text


@pytest.fixture
async def reader(start_server: Callable[..., LiveServer], make_tenant: Callable[..., Awaitable[Tenant]]) -> Tenant:
    return await make_tenant("readme", live=start_server(transport=DemoTransport()))


def _run_python_blocks(blocks: list[str], key: str, url: str) -> list[str]:
    printed: list[str] = []
    namespace: dict[str, Any] = {
        "KEY": key,
        "print": lambda *values: printed.append(" ".join(str(value) for value in values)),
    }
    try:
        for block in blocks:
            exec(compile(_at(block, url), str(README), "exec"), namespace)
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()
    return printed


async def test_the_readme_python_examples_run_unchanged(reader: Tenant) -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 3, "the quick start's SDK example and the offline examples"
    printed = await asyncio.to_thread(_run_python_blocks, blocks, reader.key, reader.base_url)
    assert any("You said: 'What is my name?'" in line and "3 item(s)" in line for line in printed), printed
    assert "[demo upstream] The tool answered: '12:00'." in printed
    # The structured output example, as its comment shows it.
    assert printed[printed.index("[demo upstream] The tool answered: '12:00'.") + 1] == (
        "goal='demo' steps=['demo'] minutes=0"
    )
    # The background example: created queued, resumed after sequence number 2 up to its end, then a cancel.
    assert printed[printed.index("goal='demo' steps=['demo'] minutes=0") + 1] == "response.created queued"
    resumed = [line.split(" ", 1) for line in printed if re.match(r"^\d+ response\.", line)]
    assert resumed[0][0] == "3", resumed
    assert [int(number) for number, _ in resumed] == list(range(3, 3 + len(resumed)))
    assert resumed[-1][1] == "response.completed"
    assert printed[-2:] == ["queued", "cancelled"]


def _json_values(text: str) -> list[Any]:
    """curl prints each body as it came, with no newline between them."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return values


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed: the README's curl session is not run")
async def test_the_readme_curl_session_runs_unchanged(reader: Tenant) -> None:
    (session,) = [block for block in _blocks("sh") if "curl" in block and "CONV=" in block]
    script = _at(session, reader.base_url)
    environment = {**os.environ, "KEY": reader.key}
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-euo", "pipefail", "-c", script], env=environment, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *turns, listing = _json_values(done.stdout.decode())
    assert [turn["status"] for turn in turns] == ["completed", "completed"]
    assert [item["role"] for item in listing["data"]] == ["user", "assistant", "user", "assistant"]
    assert "'What is my name?'" in listing["data"][3]["content"][0]["text"]
