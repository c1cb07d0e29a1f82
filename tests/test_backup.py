"""The admin side of export and import (everything, a tenant, a conversation; import into a tenant) and the
`convstore export` / `convstore import` commands, for backups between databases."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_support import service_cli
from tests.conftest import LiveServer, Tenant
from tests.turn_support import new_conversation, rows, turn

JSONL = {"Content-Type": "application/jsonl"}


@pytest.fixture
async def admin(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.settings.admin_api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def _headers(content: bytes) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in content.split(b"\n") if line]
    return [line for line in lines if line.get("object") == "conversation"]


async def _two_tenants(alice: Tenant, bob: Tenant) -> list[str]:
    first = await new_conversation(alice.http, metadata={"n": "1"}, items=[{"role": "user", "content": "a1"}])
    await turn(alice.http, "question", conversation=first)
    second = await new_conversation(alice.http, items=[{"role": "user", "content": "a2 \U0001f600\u0000"}])
    third = await new_conversation(bob.http, items=[{"role": "user", "content": "b1"}])
    return [first, second, third]


async def test_admin_exports_everything_a_tenant_or_one_conversation(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant
) -> None:
    first, second, third = await _two_tenants(alice, bob)
    everything = await admin.get("/admin/export")
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("application/jsonl")
    tenants = {h["id"]: h["tenant"] for h in _headers(everything.content)}
    assert tenants == {first: "alice", second: "alice", third: "bob"}
    assert len(everything.content.split(b"\n")) - 1 == 3 + 3 + 1 + 1  # headers + items

    only_alice = await admin.get("/admin/export", params={"tenant": "alice"})
    assert {h["id"] for h in _headers(only_alice.content)} == {first, second}
    one = await admin.get("/admin/export", params={"conversation": second})
    exported_by_tenant = await alice.http.get(f"/v1/conversations/{second}/export")
    header, *items = one.content.split(b"\n")
    assert json.loads(header) == {**json.loads(exported_by_tenant.content.split(b"\n")[0]), "tenant": "alice"}
    assert items == exported_by_tenant.content.split(b"\n")[1:]

    missing = [
        await admin.get("/admin/export", params={"tenant": "nobody"}),
        await admin.get("/admin/export", params={"conversation": "conv_nope"}),
        await admin.get("/admin/export", params={"tenant": "bob", "conversation": first}),
    ]
    assert [(m.status_code, m.json()["error"]["param"]) for m in missing] == [
        (404, "tenant"),
        (404, "conversation"),
        (404, "conversation"),
    ]
    assert (await alice.http.get("/admin/export")).status_code == 403


async def test_admin_import_into_a_tenant_is_all_or_nothing(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, db: AsyncEngine
) -> None:
    await _two_tenants(alice, bob)
    exported = (await admin.get("/admin/export", params={"tenant": "alice"})).content
    await admin.post("/admin/api-keys", json={"tenant": "carol"})
    answer = await admin.post("/admin/tenants/carol/import", content=exported, headers=JSONL)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "conversation.import" and body["items"] == 4
    assert len(body["conversations"]) == 2
    again = (await admin.get("/admin/export", params={"tenant": "carol"})).content
    old_lines, new_lines = exported.split(b"\n"), again.split(b"\n")
    assert len(old_lines) == len(new_lines)
    # Conversations are exported in id order, and the imported ones get ids in the file's order.
    for before, after in zip(old_lines, new_lines, strict=True):
        if not before:
            continue
        old_value, new_value = json.loads(before), json.loads(after)
        renamed = before.replace(str(old_value["id"]).encode(), str(new_value["id"]).encode())
        assert renamed.replace(b'"tenant":"alice"', b'"tenant":"carol"') == after

    conversations_before = len(await rows(db, "SELECT id FROM conversation"))
    broken = exported + b'{"type":"message","role":"robot","content":"x"}\n'
    refused = await admin.post("/admin/tenants/carol/import", content=broken, headers=JSONL)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith(f"Line {len(old_lines)}: ")
    assert len(await rows(db, "SELECT id FROM conversation")) == conversations_before
    assert (await admin.post("/admin/tenants/nobody/import", content=exported, headers=JSONL)).status_code == 404


async def test_cli_export_and_import_make_a_backup_between_databases(
    alice: Tenant, bob: Tenant, database_url: str, db: AsyncEngine, tmp_path: Path
) -> None:
    *_, third = await _two_tenants(alice, bob)
    backup = tmp_path / "backup.jsonl"
    exported = service_cli(database_url, "export", "--output", str(backup))
    assert exported.returncode == 0, exported.stderr
    assert {h["tenant"] for h in _headers(backup.read_bytes())} == {"alice", "bob"}

    # Restoring into the same database stands in for another one: new ids, each under its header's tenant.
    restored = service_cli(database_url, "import", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.decode().strip() == "imported 3 conversations (5 items) with new ids"
    per_tenant = await rows(
        db, "SELECT t.name, count(*) AS n FROM conversation c JOIN tenant t ON t.id = c.tenant_id GROUP BY t.name"
    )
    assert sorted((r["name"], r["n"]) for r in per_tenant) == [("alice", 4), ("bob", 2)]

    into_dave = service_cli(database_url, "import", "-", "--tenant", "dave", stdin=backup.read_bytes())
    assert into_dave.returncode == 0, into_dave.stderr
    dave = await rows(db, "SELECT c.id FROM conversation c JOIN tenant t ON t.id = c.tenant_id WHERE t.name = 'dave'")
    assert len(dave) == 3

    before = len(await rows(db, "SELECT id FROM conversation"))
    bad = backup.read_bytes() + b"not json\n"
    failed = service_cli(database_url, "import", "-", stdin=bad)
    assert failed.returncode == 2
    assert b"Line 9: not valid JSON" in failed.stderr
    assert b"nothing was imported" in failed.stderr
    assert len(await rows(db, "SELECT id FROM conversation")) == before
    one = service_cli(database_url, "export", "--conversation", third)
    assert one.returncode == 0 and len(_headers(one.stdout)) == 1
    unknown = service_cli(database_url, "export", "--tenant", "nobody")
    assert unknown.returncode == 2 and b"Tenant 'nobody' not found." in unknown.stderr
    both = service_cli(database_url, "export", "--tenant", "alice", "--conversation", third)
    assert both.returncode == 2 and b"not allowed with argument" in both.stderr and both.stdout == b""
