"""The admin side of export and import (everything, a tenant, a conversation; import into a tenant) and the
`convstore export` / `convstore import` commands, for backups between databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_support import service_cli
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.turn_support import new_conversation, rows, turn, user

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


async def _tenant_id(db: AsyncEngine, name: str) -> str:
    (row,) = await rows(db, "SELECT id FROM tenant WHERE name = :name", name=name)
    return str(row["id"])


async def test_admin_exports_everything_a_tenant_or_one_conversation(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, db: AsyncEngine
) -> None:
    first, second, third = await _two_tenants(alice, bob)
    everything = await admin.get("/admin/export")
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("application/jsonl")
    tenants = {h["id"]: h["tenant"] for h in _headers(everything.content)}
    assert tenants == {first: "alice", second: "alice", third: "bob"}
    lines = [json.loads(line) for line in everything.content.split(b"\n") if line]
    assert len(lines) == 3 + 5 + 3 + 1  # headers, items, each conversation's end line, the file's
    ends = [line for line in lines if line.get("object") == "conversation.end"]
    assert [(end["id"], end["items"]) for end in ends] == [(first, 3), (second, 1), (third, 1)]
    assert lines[-1] == {"object": "export.end", "conversations": 3}

    only_alice = await admin.get("/admin/export", params={"tenant": "alice"})
    assert {h["id"] for h in _headers(only_alice.content)} == {first, second}
    one = await admin.get("/admin/export", params={"conversation": second})
    exported_by_tenant = await alice.http.get(f"/v1/conversations/{second}/export")
    header, *items, file_end, after = one.content.split(b"\n")
    tenant_header = json.loads(exported_by_tenant.content.split(b"\n")[0])
    alice_id = await _tenant_id(db, "alice")
    assert json.loads(header) == {
        **tenant_header,
        "tenant": "alice",
        "tenant_id": alice_id,
        "file_ends_with": "export.end",
    }
    assert items == exported_by_tenant.content.split(b"\n")[1:-1]  # the items and the conversation's end line
    assert (json.loads(file_end), after) == ({"object": "export.end", "conversations": 1}, b"")

    by_id = await admin.get("/admin/export", params={"tenant": alice_id})  # a tenant's id, as the listings take
    assert by_id.status_code == 200 and by_id.content == only_alice.content
    missing = [
        await admin.get("/admin/export", params={"tenant": "nobody"}),
        await admin.get("/admin/export", params={"conversation": "conv_nope"}),
        await admin.get("/admin/export", params={"tenant": "bob", "conversation": first}),
    ]
    assert [(m.status_code, m.json()["error"]["param"], m.json()["error"]["code"]) for m in missing] == [
        (400, "tenant", "unknown_tenant"),  # as the admin listings answer an unknown tenant
        (404, "conversation", "not_found"),
        (404, "conversation", "not_found"),
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
    alice_id, carol_id = await _tenant_id(db, "alice"), await _tenant_id(db, "carol")
    assert len(old_lines) == len(new_lines)
    # Conversations are exported in id order, and the imported ones get ids in the file's order.
    for before, after in zip(old_lines, new_lines, strict=True):
        if not before:
            continue
        old_value, new_value = json.loads(before), json.loads(after)
        if "id" not in old_value:  # the file's end line
            assert before == after
            continue
        renamed = before.replace(str(old_value["id"]).encode(), str(new_value["id"]).encode())
        renamed = renamed.replace(b'"tenant":"alice"', b'"tenant":"carol"')
        assert renamed.replace(alice_id.encode(), carol_id.encode()) == after

    conversations_before = len(await rows(db, "SELECT id FROM conversation"))
    broken = exported + b'{"type":"message","role":"robot","content":"x"}\n'
    refused = await admin.post("/admin/tenants/carol/import", content=broken, headers=JSONL)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith(f"Line {len(old_lines)}: ")
    assert len(await rows(db, "SELECT id FROM conversation")) == conversations_before
    assert (await admin.post("/admin/tenants/nobody/import", content=exported, headers=JSONL)).status_code == 404


async def test_an_export_of_many_cut_short_between_two_conversations_is_refused(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, database_url: str, db: AsyncEngine
) -> None:
    """Cut between two conversations, a backup was a whole, smaller one: every conversation in it complete, the
    rest missing without a word. Its file now ends with a line of its own, which every header announces."""
    await _two_tenants(alice, bob)
    exported = (await admin.get("/admin/export")).content
    lines = exported.split(b"\n")[:-1]
    boundaries = [n for n, line in enumerate(lines) if json.loads(line).get("object") == "conversation.end"]
    assert len(boundaries) == 3 and boundaries[-1] == len(lines) - 2
    await admin.post("/admin/api-keys", json={"tenant": "carol"})
    conversations_before = len(await rows(db, "SELECT id FROM conversation"))
    for end in boundaries:
        cut = b"\n".join(lines[: end + 1]) + b"\n"
        refused = await admin.post("/admin/tenants/carol/import", content=cut, headers=JSONL)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["message"] == (
            f'Line {end + 1}: the file ends before its end line ({{"object": "export.end"}}): it was cut short, '
            "and nothing is imported"
        )
        failed = service_cli(database_url, "import", "-", stdin=cut)
        assert failed.returncode == 2 and b"cut short" in failed.stderr, failed.stderr
        assert b"(nothing was imported)" not in failed.stderr  # the message says so already
    # A conversation left out in the middle: the count on the file's end line tells.
    second_left_out = [*lines[: boundaries[0] + 1], *lines[boundaries[1] + 1 :]]
    refused = await admin.post("/admin/tenants/carol/import", content=b"\n".join(second_left_out), headers=JSONL)
    assert refused.status_code == 400
    assert "counts 3 conversations, but it holds 2" in refused.json()["error"]["message"]
    assert len(await rows(db, "SELECT id FROM conversation")) == conversations_before
    # A one-conversation admin export goes into the tenant's own import too.
    one = (await admin.get("/admin/export", params={"tenant": "bob"})).content
    assert (await alice.http.post("/v1/conversations/import", content=one, headers=JSONL)).status_code == 200


async def test_exports_joined_end_to_end_import_as_one_and_a_cut_first_part_is_still_refused(
    admin: httpx.AsyncClient, alice: Tenant, bob: Tenant, database_url: str, db: AsyncEngine
) -> None:
    """`cat a.jsonl b.jsonl`, two exports of many: before end lines, such a file imported as both; the first
    part's end line then refused every line after it."""
    await _two_tenants(alice, bob)
    of_alice = (await admin.get("/admin/export", params={"tenant": "alice"})).content
    of_bob = (await admin.get("/admin/export", params={"tenant": "bob"})).content
    await admin.post("/admin/api-keys", json={"tenant": "carol"})
    joined = await admin.post("/admin/tenants/carol/import", content=of_alice + of_bob, headers=JSONL)
    assert joined.status_code == 200, joined.text
    assert len(joined.json()["conversations"]) == 3 and joined.json()["items"] == 5
    cli = service_cli(database_url, "import", "-", "--tenant", "dave", stdin=of_alice + of_bob)
    assert cli.returncode == 0 and b"imported 3 conversations (5 items)" in cli.stdout, cli.stderr

    before = len(await rows(db, "SELECT id FROM conversation"))
    alice_lines = of_alice.split(b"\n")[:-1]
    for cut in (b"\n".join(alice_lines[:-1]) + b"\n", b"\n".join(alice_lines[:-2]) + b"\n"):
        refused = await admin.post("/admin/tenants/carol/import", content=cut + of_bob, headers=JSONL)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_jsonl"
    # An end line is there for its count.
    uncounted = of_bob.replace(b'"conversations":1}', b'"conversations":null}')
    refused = await admin.post("/admin/tenants/carol/import", content=uncounted, headers=JSONL)
    assert refused.status_code == 400
    assert "an end line's conversations must be a whole number" in refused.json()["error"]["message"]
    assert len(await rows(db, "SELECT id FROM conversation")) == before


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

    # As an editor on Windows saves it: a byte order mark, CRLF line ends, a blank line at the end.
    edited = b"\xef\xbb\xbf" + backup.read_bytes().replace(b"\n", b"\r\n") + b"\r\n"
    into_dave = service_cli(database_url, "import", "-", "--tenant", "dave", stdin=edited)
    assert into_dave.returncode == 0, into_dave.stderr
    dave = await rows(db, "SELECT c.id FROM conversation c JOIN tenant t ON t.id = c.tenant_id WHERE t.name = 'dave'")
    assert len(dave) == 3

    before = len(await rows(db, "SELECT id FROM conversation"))
    bad = backup.read_bytes() + b"not json\n"
    failed = service_cli(database_url, "import", "-", stdin=bad)
    assert failed.returncode == 2
    assert b"Line 13: not valid JSON" in failed.stderr  # 3 headers, 5 items, 3 conversation end lines, 1 file end
    assert b"nothing was imported" in failed.stderr
    assert len(await rows(db, "SELECT id FROM conversation")) == before
    one = service_cli(database_url, "export", "--conversation", third)
    assert one.returncode == 0 and len(_headers(one.stdout)) == 1
    unknown = service_cli(database_url, "export", "--tenant", "nobody")
    assert unknown.returncode == 2 and b"No tenant with the name or id 'nobody'" in unknown.stderr
    both = service_cli(database_url, "export", "--tenant", "alice", "--conversation", third)
    assert both.returncode == 2 and b"not allowed with argument" in both.stderr and both.stdout == b""


def _with_header(backup: bytes, **changes: object) -> bytes:
    """The backup with its one conversation's header changed (a value None: the field left out)."""
    header, rest = backup.split(b"\n", 1)
    value = {**json.loads(header), **changes}
    return json.dumps({k: v for k, v in value.items() if v is not None}).encode() + b"\n" + rest


async def test_a_restored_backup_continues_its_compacted_conversations_under_new_tenant_ids(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    database_url: str,
    db: AsyncEngine,
) -> None:
    """A compaction item is sealed for its tenant's id, and a restore into another database (with the same
    COMPACTION_KEY, as it needs) creates the tenants anew, with new ids: every turn on a restored compacted
    conversation was refused (400 invalid_encrypted_content). The operators' imports seal such items again for
    the tenant they import into. Here, tenants new to the database stand in for another database's."""
    key = {"COMPACTION_KEY": "restore-test-compaction-key-0123456789"}
    live = start_server(compaction_key=key["COMPACTION_KEY"])
    alice = await make_tenant("alice", live=live)
    fake_upstream.reply_json(text_response("Ada introduced herself.", msg_id="msg_summary"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": "openai/gpt-4o", "input": "I am Ada"})
    assert compacted.status_code == 200, compacted.text
    conversation = await new_conversation(alice.http, items=compacted.json()["output"])
    exported = service_cli(database_url, "export", "--conversation", conversation)
    assert exported.returncode == 0, exported.stderr
    (header,) = _headers(exported.stdout)
    assert (header["tenant"], header["tenant_id"]) == ("alice", await _tenant_id(db, "alice"))

    async def restored(tenant_name: str, backup: bytes, *args: str) -> tuple[Tenant, str, bytes]:
        """The backup imported, and the tenant, the conversation it got, and what the import said on stderr."""
        imported = service_cli(database_url, "import", "-", *args, stdin=backup, env=key)
        assert imported.returncode == 0, imported.stderr
        (row,) = await rows(
            db,
            "SELECT c.id FROM conversation c JOIN tenant t ON t.id = c.tenant_id WHERE t.name = :name",
            name=tenant_name,
        )
        return await make_tenant(tenant_name, live=live), row["id"], imported.stderr

    summary = "Summary of the earlier part of this conversation (it was compacted):\n\nAda introduced herself."
    backups = {
        "dave": (exported.stdout, "--tenant", "dave"),  # into another tenant
        "erin": (_with_header(exported.stdout, tenant="erin"),),  # a tenant the database did not have
        # A file from before exports named the tenant's id: the tenant of the header's name, when there is one.
        "frank": (_with_header(exported.stdout, tenant_id=None), "--tenant", "frank"),
    }
    for name, (backup, *args) in backups.items():
        tenant, imported_conversation, said = await restored(name, backup, *args)
        assert said == b"", said
        fake_upstream.reply_json(text_response("You are Ada."))
        turn = {"model": "openai/gpt-4o", "input": "Who am I?", "conversation": imported_conversation}
        answer = await tenant.http.post("/v1/responses", json=turn)
        assert answer.status_code == 200, (name, answer.text)
        assert fake_upstream.inputs[-1] == [
            user("I am Ada"),
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": summary}]},
            user("Who am I?"),
        ], name

    # Sealed for a tenant the file names by no id this database knows: imported as it is, said so, and refused
    # at the turn (as it was for every restore before) rather than sent without the history it stands for.
    calls = len(fake_upstream.requests)
    gina, imported_conversation, said = await restored(
        "gina", _with_header(exported.stdout, tenant="gina", tenant_id=None)
    )
    assert b"warning: 1 compaction item(s) were sealed with a key this service does not hold" in said
    turn = {"model": "openai/gpt-4o", "input": "Who am I?", "conversation": imported_conversation}
    refused = await gina.http.post("/v1/responses", json=turn)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_encrypted_content"
    assert len(fake_upstream.requests) == calls


async def test_the_admin_import_seals_compaction_items_again_for_its_tenant(
    admin: httpx.AsyncClient,
    alice: Tenant,
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
) -> None:
    fake_upstream.reply_json(text_response("Ada introduced herself.", msg_id="msg_summary"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": "openai/gpt-4o", "input": "I am Ada"})
    conversation = await new_conversation(alice.http, items=compacted.json()["output"])
    exported = (await admin.get("/admin/export", params={"conversation": conversation})).content
    carol = await make_tenant("carol")
    answer = await admin.post("/admin/tenants/carol/import", content=exported, headers=JSONL)
    assert answer.status_code == 200, answer.text
    assert answer.json()["unopened_compaction_items"] == 0
    imported = answer.json()["conversations"][0]["id"]
    fake_upstream.reply_json(text_response("You are Ada."))
    turned = await carol.http.post(
        "/v1/responses", json={"model": "openai/gpt-4o", "input": "Who am I?", "conversation": imported}
    )
    assert turned.status_code == 200, turned.text
    assert "Ada introduced herself." in json.dumps(fake_upstream.inputs[-1])
    # One the service cannot open is imported as it was, and counted.
    forged = exported.replace(b'"encrypted_content":"cs1.', b'"encrypted_content":"cs1.AAAA')
    answer = await admin.post("/admin/tenants/carol/import", content=forged, headers=JSONL)
    assert answer.status_code == 200 and answer.json()["unopened_compaction_items"] == 1


async def test_a_backup_of_a_service_without_compaction_key_restores_with_its_database_key(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    fake_upstream: FakeOpenRouter,
    database_url: str,
    db: AsyncEngine,
) -> None:
    """Without COMPACTION_KEY (the default), items are sealed with a key kept in the database, which no export
    carries: in another database no key opened them. `convstore compaction-key` prints it for the importing
    service's COMPACTION_KEYS_PREVIOUS."""
    source = start_server()
    alice = await make_tenant("alice", live=source)
    fake_upstream.reply_json(text_response("Ada introduced herself.", msg_id="msg_summary"))
    compacted = await alice.http.post("/v1/responses/compact", json={"model": "openai/gpt-4o", "input": "I am Ada"})
    assert compacted.status_code == 200, compacted.text
    conversation = await new_conversation(alice.http, items=compacted.json()["output"])
    printed = service_cli(database_url, "compaction-key")
    assert printed.returncode == 0, printed.stderr
    database_key = printed.stdout.decode().strip()
    assert database_key.startswith("db:") and len(database_key) > 40
    backup = service_cli(database_url, "export", "--conversation", conversation).stdout
    # Another database: a key of its own.
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM service_secret"))
    target = start_server()

    async def turn_after_import(tenant_name: str, env: dict[str, str]) -> tuple[httpx.Response, bytes]:
        imported = service_cli(database_url, "import", "-", "--tenant", tenant_name, stdin=backup, env=env)
        assert imported.returncode == 0, imported.stderr
        (row,) = await rows(
            db,
            "SELECT c.id FROM conversation c JOIN tenant t ON t.id = c.tenant_id WHERE t.name = :name",
            name=tenant_name,
        )
        tenant = await make_tenant(tenant_name, live=target)
        fake_upstream.reply_json(text_response("You are Ada."))
        body = {"model": "openai/gpt-4o", "input": "Who am I?", "conversation": row["id"]}
        return await tenant.http.post("/v1/responses", json=body), imported.stderr

    refused, said = await turn_after_import("dave", {})
    assert b"`convstore compaction-key` there prints it" in said
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_encrypted_content"
    answered, said = await turn_after_import("erin", {"COMPACTION_KEYS_PREVIOUS": database_key})
    assert said == b"" and answered.status_code == 200, (said, answered.text)
    assert "Ada introduced herself." in json.dumps(fake_upstream.inputs[-1])
    assert service_cli(database_url, "compaction-key").stdout.decode().strip() != database_key


async def _conversation_of_many_pages(tenant: Tenant) -> str:
    """A conversation whose export takes several reads (3,000 items of 9 KB): it can be deleted in between."""
    lines = [json.dumps({"object": "conversation", "metadata": {}})]
    lines += [
        json.dumps({"type": "message", "role": "user", "content": f"item {n} " + "y" * 9000}) for n in range(3000)
    ]
    imported = await tenant.http.post("/v1/conversations/import", content="\n".join(lines).encode(), headers=JSONL)
    assert imported.status_code == 200, imported.text
    return str(imported.json()["id"])


async def _export_deleting(admin: httpx.AsyncClient, owner: Tenant, doomed: str, **params: str) -> bytes:
    """An operators' export (of `params`), with `doomed` deleted by its owner once the first chunk arrived."""
    received = b""
    async with admin.stream("GET", "/admin/export", params=params) as export:
        assert export.status_code == 200
        chunks = export.aiter_bytes()
        received += await chunks.__anext__()
        assert (await owner.http.delete(f"/v1/conversations/{doomed}")).status_code == 200
        async for chunk in chunks:
            received += chunk
    return received


async def test_a_conversation_deleted_while_a_backup_streams_is_withdrawn_not_the_whole_backup(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine
) -> None:
    """The backup read each conversation a page at a time (no connection held while its reader reads), and a
    tenant's delete between two pages broke off the whole backup (the CLI exited with a traceback). The deleted
    conversation is now withdrawn by a line of its own after its lines so far, the backup goes on, and an import
    leaves that conversation out."""
    doomed = await _conversation_of_many_pages(alice)
    kept = await new_conversation(alice.http, items=[{"role": "user", "content": "kept"}])
    assert doomed < kept  # exported in id order: the deleted one first
    received = await _export_deleting(admin, alice, doomed, tenant="alice")
    values = [json.loads(line) for line in received.split(b"\n") if line]
    withdrawn = [v for v in values if v.get("object") == "conversation.withdrawn"]
    assert withdrawn == [{"object": "conversation.withdrawn", "id": doomed, "reason": "deleted while it was exported"}]
    assert [v["id"] for v in values if v.get("object") == "conversation"] == [doomed, kept]
    assert values[-3]["content"][0]["text"] == "kept"
    assert values[-2:] == [
        {"object": "conversation.end", "id": kept, "items": 1},
        {"object": "export.end", "conversations": 1},
    ]

    await admin.post("/admin/api-keys", json={"tenant": "carol"})
    restored = await admin.post("/admin/tenants/carol/import", content=received, headers=JSONL)
    assert restored.status_code == 200, restored.text
    assert restored.json()["items"] == 1 and len(restored.json()["conversations"]) == 1
    # A one-conversation import of such a file says why it cannot be whole.
    single = received[: received.index(b"\n", received.index(b"conversation.withdrawn")) + 1]
    refused = await alice.http.post("/v1/conversations/import", content=single, headers=JSONL)
    assert refused.status_code == 400 and "deleted while it was exported" in refused.json()["error"]["message"]


async def test_an_export_whose_every_conversation_was_withdrawn_still_ends_and_imports_as_nothing(
    admin: httpx.AsyncClient, alice: Tenant, database_url: str, db: AsyncEngine
) -> None:
    """The file's end line was written only after a conversation written whole: an export of one conversation
    (or of a tenant) deleted while it streamed ended with its withdrawn line, and an import called the whole file
    cut short."""
    doomed = await _conversation_of_many_pages(alice)
    received = await _export_deleting(admin, alice, doomed, conversation=doomed)
    values = [json.loads(line) for line in received.split(b"\n") if line]
    assert values[-2:] == [
        {"object": "conversation.withdrawn", "id": doomed, "reason": "deleted while it was exported"},
        {"object": "export.end", "conversations": 0},
    ]
    await admin.post("/admin/api-keys", json={"tenant": "carol"})
    restored = await admin.post("/admin/tenants/carol/import", content=received, headers=JSONL)
    assert restored.status_code == 200, restored.text
    assert restored.json()["conversations"] == [] and restored.json()["items"] == 0
    assert service_cli(database_url, "import", "-", "--tenant", "carol", stdin=received).returncode == 0


async def test_an_exported_item_stored_before_todays_part_checks_imports_as_it_is(
    admin: httpx.AsyncClient, alice: Tenant, db: AsyncEngine
) -> None:
    """A line written by hand (no id) is checked as the items API checks a client's message, since a part the
    upstream refuses would stop every later turn; an exported one (its id first, as an export writes it) moves
    as the service stored it, some of it before those checks: one such item refused the whole import."""
    parts = [{"type": "input_file", "filename": "notes.pdf"}]  # stored so before input_file needed a source
    header = json.dumps({"object": "conversation", "metadata": {}}) + "\n"
    by_hand = {"type": "message", "role": "user", "content": parts}
    exported = {"id": "msg_old", "type": "message", "role": "user", "content": parts, "status": "completed"}
    refused = await alice.http.post(
        "/v1/conversations/import", content=(header + json.dumps(by_hand) + "\n").encode(), headers=JSONL
    )
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith("Line 2: "), refused.text
    file = (header + json.dumps(exported) + "\n").encode()
    own = await alice.http.post("/v1/conversations/import", content=file, headers=JSONL)
    assert own.status_code == 200, own.text
    moved = await admin.post("/admin/tenants/alice/import", content=file, headers=JSONL)
    assert moved.status_code == 200, moved.text
    stored = await rows(db, "SELECT body FROM item")
    assert [json.loads(row["body"])["content"] for row in stored] == [parts, parts]


async def test_an_export_whose_reader_goes_away_ends_quietly_with_sigpipes_status(
    alice: Tenant, database_url: str
) -> None:
    """`convstore export | head -1`: the export stops without an error message (there was a traceback-like
    "cannot write None: Broken pipe"), and its status says it did not finish."""
    big = "x" * 250_000  # far past a pipe's buffer: the export is still writing when the reader goes
    await new_conversation(alice.http, items=[{"role": "user", "content": big} for _ in range(8)])
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    export = subprocess.Popen(
        [sys.executable, "-m", "service", "export"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert export.stdout is not None and export.stderr is not None
    first = export.stdout.readline()
    assert json.loads(first)["object"] == "conversation"
    export.stdout.close()
    assert export.wait(timeout=60) == 141
    assert export.stderr.read() == b""
