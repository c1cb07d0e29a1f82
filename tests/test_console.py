"""The admin console at /admin/ui: its rules over plain HTTP (sign-in, cookies, CSRF), then a whole session in
headless Chromium (Debian's `chromium`, driven by Playwright's Python package; nothing is downloaded), which
writes a screenshot of every page to build/console-screenshots/ (CONSOLE_SCREENSHOTS to change it)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_support import ROOT
from tests.conftest import LiveServer, Tenant
from tests.console_support import LOGIN, sign_in
from tests.fake_openrouter import FakeOpenRouter, response_with_output

ADMIN_KEY = "admin-test-secret"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser_client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def test_pages_need_a_session_and_only_the_admin_credential_signs_in(
    browser_client: httpx.AsyncClient, alice: Tenant
) -> None:
    for page in ("/admin/ui/", "/admin/ui/stats", "/admin/ui/keys", "/admin/ui/threads/conv_x"):
        answer = await browser_client.get(page)
        assert answer.status_code == 303 and answer.headers["location"] == LOGIN, page
    tenant = await sign_in(browser_client, alice.key)
    assert tenant.status_code == 403 and "tenant key" in tenant.text
    assert "convstore_console=" not in tenant.headers.get("set-cookie", "").replace("convstore_console_login", "")
    wrong = await sign_in(browser_client, "sk-cs-wrong")
    assert wrong.status_code == 401 and "Incorrect or revoked key" in wrong.text
    assert (await browser_client.get("/admin/ui/")).status_code == 303

    signed_in = await sign_in(browser_client, ADMIN_KEY)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/admin/ui/"
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("convstore_console="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/admin/ui" in flags
    assert "secure" not in flags  # plain http here; over https the cookie is Secure
    page = await browser_client.get("/admin/ui/")
    assert page.status_code == 200 and "<h1>Threads</h1>" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-type"] == "text/html; charset=utf-8"  # the charset once
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    metrics = await browser_client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    # The session is not a credential for the API.
    assert (await browser_client.get("/admin/conversations")).status_code == 401


async def test_failed_sign_ins_are_slowed_and_the_cookie_does_not_show_the_credentials_hash(
    start_server: Callable[..., LiveServer],
) -> None:
    """Sign-in took any number of guesses (300 in 3.6 s) at an ADMIN_API_KEY an operator chose; and the session
    cookie carried the key's plain SHA-256, a fast hash to guess at offline from any copy of the cookie."""
    async with httpx.AsyncClient(base_url=start_server().url, timeout=30) as client:
        for _ in range(10):
            assert (await sign_in(client, "sk-cs-a-guess")).status_code == 401
        refused = await sign_in(client, ADMIN_KEY)  # the right key too, while this address waits
        assert refused.status_code == 429 and "Too many failed sign-ins from this address" in refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 6
        assert (await client.get("/admin/ui/")).status_code == 303

    async with httpx.AsyncClient(base_url=start_server().url, timeout=30) as client:
        signed_in = await sign_in(client, ADMIN_KEY)
        assert signed_in.status_code == 303
        assert (await client.get("/admin/ui/")).status_code == 200
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("convstore_console="))
    digest = hashlib.sha256(ADMIN_KEY.encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() not in cookie
    assert digest.hex() not in cookie


async def test_failed_sign_ins_sent_at_once_are_slowed_too(start_server: Callable[..., LiveServer]) -> None:
    """The limit only looked before each guess and spent after it: guesses sent at once all looked before the
    first was checked, so 150 at a time were each checked (401), every six seconds, instead of ten."""
    async with httpx.AsyncClient(base_url=start_server().url, timeout=60) as client:
        form = await client.get(LOGIN)
        match = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert match
        marker = form.cookies["convstore_console_login"]

        async def guess(number: int) -> int:
            cookies = {"convstore_console_login": marker}
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60, cookies=cookies) as own:
                answer = await own.post(LOGIN, data={"key": f"sk-cs-guess-{number}", "csrf": match.group(1)})
                return answer.status_code

        codes = await asyncio.gather(*(guess(number) for number in range(40)))
        assert codes.count(401) <= 10 and codes.count(401) + codes.count(429) == 40, sorted(codes)
        # The right key is refused while the address waits, and a right key is not counted as a guess.
        assert (await sign_in(client, ADMIN_KEY)).status_code == 429
    async with httpx.AsyncClient(base_url=start_server().url, timeout=30) as client:
        for _ in range(12):
            client.cookies.clear()
            assert (await sign_in(client, ADMIN_KEY)).status_code == 303


async def test_forms_without_the_session_csrf_token_change_nothing(
    browser_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    forged = await browser_client.post("/admin/ui/keys", data={"tenant": "mallory", "csrf": "forged"})
    assert forged.status_code == 403
    missing = await browser_client.post("/admin/ui/keys", data={"tenant": "mallory"})
    assert missing.status_code == 403
    async with db.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM api_key")) == 0
    # A sign-in form needs its own token too.
    assert (await browser_client.post(LOGIN, data={"key": ADMIN_KEY})).status_code == 403
    # A token or cookie with a character past ASCII is as wrong as any other (it was a 500).
    assert (await browser_client.post("/admin/ui/keys", data={"tenant": "m", "csrf": "\u00e9"})).status_code == 403
    assert (await browser_client.post(LOGIN, data={"key": ADMIN_KEY, "csrf": "\u00e9"})).status_code == 403
    # Nor can a multipart form that cannot be read make a 500 (the sign-in form needs no session): bytes that are
    # not UTF-8, a charset Python does not know.
    for unreadable_form in (
        b'--XX\r\ncontent-disposition: form-data; name="key"\r\n\r\nk\r\n'
        b'--XX\r\ncontent-disposition: form-data; name="csrf"\r\n\r\n\xed\xa0\x80\xff\r\n--XX--\r\n',
        b'--XX\r\ncontent-disposition: form-data; name="key"\r\ncontent-type: text/plain; charset=nonexistent'
        b"\r\n\r\nk\r\n--XX--\r\n",
    ):
        unreadable = await browser_client.post(
            LOGIN, content=unreadable_form, headers={"content-type": "multipart/form-data; boundary=XX"}
        )
        assert unreadable.status_code == 403, unreadable.text[:300]
    browser_client.cookies.clear()
    forged_cookie = [(b"cookie", "convstore_console=a.b.c.\u00e9".encode())]  # sent as its UTF-8 bytes
    answer = await browser_client.get("/admin/ui/", headers=forged_cookie)
    assert answer.status_code == 303 and answer.headers["location"] == LOGIN


async def test_a_revoked_admin_key_ends_its_console_sessions(
    browser_client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]], anonymous: httpx.AsyncClient
) -> None:
    ops = await make_tenant("ops", admin=True)
    assert (await sign_in(browser_client, ops.key)).status_code == 303
    assert (await browser_client.get("/admin/ui/keys")).status_code == 200
    revoked = await anonymous.delete(f"/admin/api-keys/{ops.key_id}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert revoked.status_code == 200
    assert (await browser_client.get("/admin/ui/keys")).status_code == 303


async def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(
    browser_client: httpx.AsyncClient, server: LiveServer, db: AsyncEngine
) -> None:
    """Signing out used to clear the browser's cookie only: a copy of it opened the console for hours more."""
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    copied = browser_client.cookies["convstore_console"]
    page = await browser_client.get("/admin/ui/keys")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    signed_out = await browser_client.post("/admin/ui/logout", data={"csrf": csrf.group(1)})
    assert signed_out.status_code == 303 and signed_out.headers["location"] == LOGIN
    async with httpx.AsyncClient(base_url=server.url, cookies={"convstore_console": copied}) as copy:
        for path in ("/admin/ui/", "/admin/ui/keys"):
            answer = await copy.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == LOGIN, path
    async with db.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM console_session_end")) == 1
    # Signing in again opens a new session.
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    assert (await browser_client.get("/admin/ui/keys")).status_code == 200


async def test_invalid_filters_are_the_admin_apis_errors(browser_client: httpx.AsyncClient) -> None:
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    bad = await browser_client.get("/admin/ui/", params={"status": "sleeping"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text
    unknown = await browser_client.get("/admin/ui/", params={"tenant": "nobody"})
    assert unknown.status_code == 400 and "nobody" in unknown.text
    # Refused at the door, before any page runs: a browser still gets a page, an API client JSON.
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    nul = await browser_client.get("/admin/ui/", params={"q": "a\x00<b>"}, headers=browser)
    assert nul.status_code == 400 and nul.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in nul.text and "Query parameter &#x27;q&#x27; must not contain U+0000" in nul.text
    as_json = await browser_client.get("/admin/ui/", params={"q": "a\x00"})
    assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "q"


async def test_a_metadata_search_finds_values_holding_commas(browser_client: httpx.AsyncClient, alice: Tenant) -> None:
    """The field's pairs are comma separated: `note=a, b` searched note=a and an invalid `b`."""
    made = {}
    for name, metadata in {
        "wanted": {"note": "a, b", "region": "eu"},
        "other_region": {"note": "a, b", "region": "us"},
        "other_note": {"note": "a", "region": "eu"},
    }.items():
        created = await alice.http.post("/v1/conversations", json={"metadata": metadata})
        assert created.status_code == 200, created.text
        made[created.json()["id"]] = name
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303

    def found(page: httpx.Response) -> set[str]:
        assert page.status_code == 200, page.text
        return {made[conv] for conv in re.findall(r"/admin/ui/threads/(conv_[0-9a-z]+)", page.text) if conv in made}

    for typed in ("note=a, b, region=eu", "region=eu,note=a, b", "note=a, b\nregion=eu", "region=eu, note=a, b,"):
        assert found(await browser_client.get("/admin/ui/", params={"metadata": typed})) == {"wanted"}, typed
    assert found(await browser_client.get("/admin/ui/", params={"metadata": "note=a, region=eu"})) == {"other_note"}
    bad = await browser_client.get("/admin/ui/", params={"metadata": "nonsense, region=eu"})
    assert bad.status_code == 400 and 'role="alert"' in bad.text


async def test_a_threads_older_responses_its_whole_delete_and_a_tenants_text_as_it_reads(
    browser_client: httpx.AsyncClient, alice: Tenant
) -> None:
    """A thread page showed its newest 20 responses with no way to the others; its delete page counted the
    conversation's turns only, though the delete takes the previous_response_id turns continuing them too; a
    right-to-left override in a tenant's metadata showed `region=eu` as `eue=noiger`; and `?deleted=` showed
    any text as a success notice."""
    conv = (
        await alice.http.post("/v1/conversations", json={"metadata": {"region": "\u202eeu", "title": "x" * 300}})
    ).json()["id"]
    made = []
    for n in range(23):
        answer = await alice.http.post("/v1/responses", json={"model": "m", "input": f"turn {n}", "conversation": conv})
        assert answer.status_code == 200, answer.text
        made.append(answer.json()["id"])
    chained = await alice.http.post(
        "/v1/responses", json={"model": "m", "input": "on", "previous_response_id": made[0]}
    )
    assert chained.status_code == 200, chained.text
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303

    page = await browser_client.get(f"/admin/ui/threads/{conv}")
    assert page.status_code == 200
    newest = re.findall(r"<td><code>(resp_[^<]+)</code></td>", page.text)
    assert newest == made[::-1][:20]
    assert "region=&lt;U+202E&gt;eu" in page.text and "\u202e" not in page.text
    older_link = re.search(r'id="older-responses" href="([^"]+)"', page.text)
    assert older_link
    older = await browser_client.get(older_link.group(1).replace("&amp;", "&"))
    assert older.status_code == 200
    assert re.findall(r"<td><code>(resp_[^<]+)</code></td>", older.text) == made[::-1][20:]
    assert 'id="older-responses"' not in older.text

    confirm = await browser_client.get(f"/admin/ui/threads/{conv}/delete")
    assert confirm.status_code == 200 and "its 48 items,\n  its 24 responses" in confirm.text

    for forged in ("Everything was deleted. Call +1 555 0100 to restore it", "<b>x</b>"):
        listing = await browser_client.get("/admin/ui/", params={"deleted": forged})
        assert listing.status_code == 200 and 'class="notice"' not in listing.text
    shown = await browser_client.get("/admin/ui/", params={"deleted": "conv_0123abc"})
    assert "Deleted thread conv_0123abc" in shown.text


# -- the browser ------------------------------------------------------------------------------------------


async def _seed(make_tenant: Callable[..., Awaitable[Tenant]], fake_upstream: FakeOpenRouter) -> dict[str, Any]:
    alice, bob = await make_tenant("alice"), await make_tenant("bob")
    threads: dict[str, Any] = {"alice": [], "bob": []}
    for n, words in enumerate(["tell me about apples", "bananas are yellow", "cherries in june"]):
        conv = (await alice.http.post("/v1/conversations", json={"metadata": {"topic": f"fruit{n}"}})).json()["id"]
        answer = await alice.http.post(
            "/v1/responses", json={"model": "openai/gpt-4o-mini", "input": words, "conversation": conv}
        )
        assert answer.status_code == 200
        threads["alice"].append(conv)
    tools = (await bob.http.post("/v1/conversations", json={})).json()["id"]
    fake_upstream.reply_json(
        response_with_output(
            [
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "status": "completed",
                    "summary": [{"type": "summary_text", "text": "The user wants the weather; call the tool."}],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                    "status": "completed",
                },
            ],
            model="anthropic/claude-sonnet-4",
        )
    )
    answer = await bob.http.post(
        "/v1/responses",
        json={"model": "anthropic/claude-sonnet-4", "input": "weather in Paris?", "conversation": tools},
    )
    assert answer.status_code == 200, answer.text
    threads["bob"].append(tools)
    threads["alice_tenant"] = alice
    return threads


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
async def test_a_whole_console_session_in_headless_chromium(
    server: LiveServer,
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    anonymous: httpx.AsyncClient,
) -> None:
    from playwright.async_api import async_playwright

    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or ROOT / "build" / "console-screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    seeded = await _seed(make_tenant, fake_upstream)
    base = server.url + "/admin/ui"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            await page.goto(base + "/")
            assert page.url == base + "/login"
            await page.screenshot(path=shots / "login.png", full_page=True)

            # A tenant key cannot sign in.
            await page.fill("#key", seeded["alice_tenant"].key)
            await page.click("button[type=submit]")
            assert "tenant key" in await page.inner_text("[role=alert]")

            await page.fill("#key", ADMIN_KEY)
            await page.click("button[type=submit]")
            assert page.url == base + "/"
            rows = page.locator("#threads tbody tr")
            assert await rows.count() == 4
            await page.screenshot(path=shots / "threads.png", full_page=True)
            # Every column in view on a laptop's screen, without scrolling the table sideways.
            fits = "document.querySelector('#threads').scrollWidth <= document.querySelector('.scroll').clientWidth"
            assert await page.evaluate(fits)

            # Filter by tenant, then search, then page.
            await page.fill("#tenant", "bob")
            await page.click("form.filters button[type=submit]")
            assert await rows.count() == 1
            assert seeded["bob"][0] in await rows.first.inner_text()
            await page.fill("#tenant", "")
            await page.fill("#q", "bananas")
            await page.click("form.filters button[type=submit]")
            assert await rows.count() == 1
            assert seeded["alice"][1] in await rows.first.inner_text()
            await page.fill("#q", "")
            await page.fill("#limit", "3")
            await page.click("form.filters button[type=submit]")
            first_page = await rows.all_inner_texts()
            assert len(first_page) == 3
            await page.click("#next-page")
            second_page = await rows.all_inner_texts()
            assert len(second_page) == 1 and second_page[0] not in first_page
            await page.fill("#metadata", "topic=fruit2")
            await page.fill("#limit", "")
            await page.click("form.filters button[type=submit]")
            assert await rows.count() == 1 and seeded["alice"][2] in await rows.first.inner_text()

            # A thread: items in order, reasoning and the tool call shown as such, its response.
            await page.goto(f"{base}/threads/{seeded['bob'][0]}")
            kinds = await page.locator("#items .item .kind").all_inner_texts()
            assert kinds[0].startswith("MESSAGE · USER") or kinds[0].lower().startswith("message · user")
            assert "reasoning" in kinds[1].lower() and "tool call · get_weather" in kinds[2].lower()
            assert "call the tool" in await page.inner_text("#items")
            # Ids are case-sensitive: shown as they are, not in the heading's capitals.
            assert re.search(r"· (msg|fc|rs)_[0-9a-z]+", kinds[0] + kinds[1] + kinds[2]), kinds
            response_row = await page.inner_text("#responses tbody tr")
            assert "completed" in response_row and "anthropic/claude-sonnet-4" in response_row
            assert re.search(r"\t(\d+ ms|[\d.]+ s)\t", response_row), response_row  # not "0 s" for 362 ms
            await page.screenshot(path=shots / "thread.png", full_page=True)

            # Stats with its chart.
            await page.goto(base + "/stats")
            assert "alice" in await page.inner_text("#tenants") and "bob" in await page.inner_text("#tenants")
            assert await page.locator("svg rect").count() >= 2
            await page.screenshot(path=shots / "stats.png", full_page=True)

            # Create a key (shown once, works), then revoke it (stops working).
            await page.goto(base + "/keys")
            await page.fill("#tenant", "carol")
            await page.fill("#name", "from the console")
            await page.click("form.filters button[type=submit]")
            secret = (await page.inner_text("#new-key")).strip()
            await page.screenshot(path=shots / "keys-created.png", full_page=True)
            headers = {"Authorization": f"Bearer {secret}"}
            assert (await anonymous.post("/v1/conversations", json={}, headers=headers)).status_code == 200
            await page.goto(base + "/keys")
            assert secret not in await page.content()
            carol = page.locator("#keys tbody tr", has_text="carol")
            await carol.locator("button").click()
            assert "Revoked key" in await page.inner_text("[role=status]")
            assert "revoked" in await page.locator("#keys tbody tr", has_text="carol").inner_text()
            assert (await anonymous.post("/v1/conversations", json={}, headers=headers)).status_code == 401
            await page.screenshot(path=shots / "keys.png", full_page=True)

            # Hard delete with a confirmation.
            doomed = seeded["alice"][0]
            await page.goto(f"{base}/threads/{doomed}")
            await page.click(f"a[href='/admin/ui/threads/{doomed}/delete']")
            await page.screenshot(path=shots / "delete.png", full_page=True)
            await page.fill("#confirm", doomed)
            await page.click("button.danger")
            assert doomed in await page.inner_text("[role=status]")
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            assert (await anonymous.get(f"/admin/conversations/{doomed}", headers=admin)).status_code == 404

            # On a phone-sized screen.
            phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            await phone.context.add_cookies(await page.context.cookies())
            await phone.goto(base + "/")
            assert await phone.locator("#threads tbody tr").count() == 4  # carol's thread too
            await phone.screenshot(path=shots / "threads-phone.png", full_page=True)

            # Sign out: the session is gone.
            await page.click("header button")
            assert page.url == base + "/login"
            await page.goto(base + "/keys")
            assert page.url == base + "/login"
        finally:
            await browser.close()
    for name in ("login", "threads", "thread", "stats", "keys-created", "keys", "delete", "threads-phone"):
        assert (shots / f"{name}.png").stat().st_size > 5000


async def test_the_retention_page_shows_a_tenants_policy_and_preview_and_sets_it(
    browser_client: httpx.AsyncClient, alice: Tenant, anonymous: httpx.AsyncClient
) -> None:
    assert (await browser_client.get("/admin/ui/retention")).status_code == 303
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    page = await browser_client.get("/admin/ui/retention", params={"tenant": "alice"})
    assert page.status_code == 200
    assert "follows the service-wide defaults" in page.text
    assert "0 responses, 0 conversations, 0 items." in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    fields = {"csrf": csrf.group(1), "tenant": "alice", "responses_days": "30", "conversations_idle_days": ""}
    saved = await browser_client.post("/admin/ui/retention", data=fields)
    assert saved.status_code == 200 and "follows its own policy" in saved.text
    policy = await anonymous.get("/admin/tenants/alice/retention", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert policy.json()["responses_days"] == 30 and policy.json()["conversations_idle_days"] is None
    refused = await browser_client.post("/admin/ui/retention", data={**fields, "responses_days": "0"})
    assert refused.status_code == 400 and "responses_days must be a whole number" in refused.text
    # Digits Python's int() does not take ("²" is one to str.isdigit, and 4,301 of them) were a 500.
    for unreadable in ("\u00b2", "1" * 5000):
        refused = await browser_client.post("/admin/ui/retention", data={**fields, "responses_days": unreadable})
        assert refused.status_code == 400 and "responses_days must be a whole number" in refused.text
    missing = await browser_client.get("/admin/ui/retention", params={"tenant": "nobody"})
    assert missing.status_code == 404 and "Tenant &#39;nobody&#39; not found." in missing.text


async def test_a_retention_form_naming_a_tenant_with_u0000_is_a_404_not_a_500(
    browser_client: httpx.AsyncClient, alice: Tenant
) -> None:
    # A path or query holding U+0000 is refused at the door; a form field reached PostgreSQL, which refuses the
    # byte: the tenant lookup was a 500 with a traceback in the log.
    assert (await sign_in(browser_client, ADMIN_KEY)).status_code == 303
    page = await browser_client.get("/admin/ui/retention", params={"tenant": "alice"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    fields = {"csrf": csrf.group(1), "tenant": "ali\x00ce", "responses_days": "30", "conversations_idle_days": ""}
    answer = await browser_client.post("/admin/ui/retention", data=fields)
    assert answer.status_code == 404 and "not found" in answer.text
