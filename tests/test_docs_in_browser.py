"""/docs renders in a real browser with no internet: headless Chromium, with every host but the service's
unresolvable, opens the page and finds the routes listed. Skipped, saying so, where Chromium is not installed
(.ci/run installs Debian's `chromium`)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

from tests.conftest import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does): /docs not rendered"
)


async def _rendered_dom(url: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # Any host but loopback fails to resolve: the page must need nothing from the internet.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    return out.decode("utf-8", "replace")


async def test_docs_page_lists_the_routes_offline(server: LiveServer) -> None:
    dom = await _rendered_dom(f"{server.url}/docs")
    # The page embeds the document as JSON, so look for what only Swagger UI's rendering produces: one
    # operation block per route, carrying its path.
    for path in ("/v1/responses", "/v1/conversations/{conversation_id}/items", "/admin/conversations"):
        assert f'data-path="{path}"' in dom, f"{path} is not listed on the rendered /docs page"
    assert dom.count('class="opblock-summary-path"') >= 20
