"""Signing in to the operators' console as a browser does: its form, with the CSRF token the form carries."""

from __future__ import annotations

import re

import httpx

LOGIN = "/admin/ui/login"


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get(LOGIN)
    assert form.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match
    return await client.post(LOGIN, data={"key": key, "csrf": match.group(1)})
