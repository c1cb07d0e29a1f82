"""Export a conversation as JSON Lines and import it as a new one: new ids, everything else byte-exact."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.cli_support import service_cli
from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, response_with_output, text_response
from tests.openai_spec import check
from tests.turn_support import assistant, list_all, new_conversation, rows, shown, turn, user, without_ids

JSONL = {"Content-Type": "application/jsonl"}
NUL_EMOJI = "nul\u0000 emoji \U0001f600 \U0010ffff \u2028 caf\u00e9"
REASONING = {
    "type": "reasoning",
    "id": "rs_exp_1",
    "summary": [{"type": "summary_text", "text": 'Thinking \U0001f914 \\ "quoted"'}],
    "encrypted_content": "gAAAAABo+/=" + "QUJD/+=" * 50 + "\u0000tail",
    "status": "completed",
}
CALL = {"type": "function_call", "id": "fc_exp_1", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'}


async def _export(tenant: Tenant, conversation_id: str) -> list[bytes]:
    answer = await tenant.http.get(f"/v1/conversations/{conversation_id}/export")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jsonl")
    assert answer.content.endswith(b"\n")
    return answer.content.split(b"\n")[:-1]


async def _rich_conversation(tenant: Tenant, fake_upstream: FakeOpenRouter) -> str:
    conv = await new_conversation(
        tenant.http,
        metadata={"topic": "export \U0001f600", "k": "v"},
        items=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": NUL_EMOJI},
            {"type": "message", "role": "user", "status": "completed", "content": "explicit status"},
        ],
    )
    fake_upstream.reply_json(response_with_output([REASONING, assistant("Answer " + NUL_EMOJI, "msg_exp_1")]))
    await turn(tenant.http, "Think", conversation=conv)
    # A compaction item must be one the service sealed for this tenant (a forged one is refused).
    fake_upstream.reply_json(text_response("summary", msg_id="msg_summary"))
    compacted = await tenant.http.post("/v1/responses/compact", json={"model": "openai/gpt-4o", "input": "earlier"})
    assert compacted.status_code == 200, compacted.text
    compaction = compacted.json()["output"][-1]
    added = await tenant.http.post(
        f"/v1/conversations/{conv}/items",
        json={"items": [CALL, {"type": "function_call_output", "call_id": "call_1", "output": "42"}, compaction]},
    )
    assert added.status_code == 200, added.text
    return conv


def _ids(line: bytes) -> str:
    value = json.loads(line)
    return str(value["id"])


async def test_export_then_import_round_trips_byte_exact_but_for_ids(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await _rich_conversation(alice, fake_upstream)
    original = await _export(alice, conv)
    assert len(original) == 1 + 9 + 1
    header = json.loads(original[0])
    assert header == {
        "object": "conversation",
        "id": conv,
        "created_at": header["created_at"],
        "metadata": {"topic": "export \U0001f600", "k": "v"},
        "ends_with": "conversation.end",
    }
    assert json.loads(original[-1]) == {"object": "conversation.end", "id": conv, "items": 9}
    listed = await list_all(alice.http, f"/v1/conversations/{conv}/items", order="asc")
    assert shown(*(json.loads(line) for line in original[1:-1])) == listed  # exported as stored

    imported = await alice.http.post("/v1/conversations/import", content=b"\n".join(original) + b"\n", headers=JSONL)
    assert imported.status_code == 200, imported.text
    copy = imported.json()
    assert copy["object"] == "conversation"
    assert copy["id"] != conv
    assert copy["metadata"] == header["metadata"]
    assert copy["created_at"] == header["created_at"]

    again = await _export(alice, copy["id"])
    assert len(again) == len(original)
    for before, after in zip(original, again, strict=True):
        old_id, new_id = _ids(before), _ids(after)
        assert old_id != new_id
        assert before.replace(old_id.encode(), new_id.encode()) == after
    # The originals are untouched.
    assert await _export(alice, conv) == original

    # Items stored without an id in their JSON (client input) are copied without one, byte for byte, so the
    # imported conversation's next turn sends upstream what the original's would, but for the ids.
    stored = await rows(
        db,
        "SELECT c.body AS copy, o.body AS original FROM item c JOIN item o ON o.position = c.position "
        "WHERE c.conversation_id = :copy AND o.conversation_id = :original ORDER BY c.position",
        copy=copy["id"],
        original=conv,
    )
    assert [r["copy"] for r in stored[:3]] == [r["original"] for r in stored[:3]]
    fake_upstream.reply_json(text_response("ok", msg_id="msg_after_import"))
    await turn(alice.http, "next", conversation=copy["id"])
    fake_upstream.reply_json(text_response("ok", msg_id="msg_after_original"))
    await turn(alice.http, "next", conversation=conv)
    from_copy, from_original = fake_upstream.inputs[-2], fake_upstream.inputs[-1]
    # The compaction item added last stands for everything before it but the user messages.
    assert len(from_copy) == len(from_original) == 5
    for sent_copy, sent_original in zip(from_copy, from_original, strict=True):
        if "id" in sent_original:
            # An item whose JSON has no status (a client's function call) gets the one the items API showed.
            assert sent_copy["id"] != sent_original["id"]
            assert {**sent_copy, "id": sent_original["id"]} == {"status": "completed", **sent_original}
        else:
            assert sent_copy == sent_original
    assert from_copy[-1] == user("next")


async def test_import_answers_the_conversation_and_sdk_reads_it(alice: Tenant) -> None:
    file = (
        b'{"object":"conversation","id":"conv_elsewhere","created_at":1700000000,"metadata":{"a":"b"}}\n'
        b'{"id":"msg_x","type":"message","role":"user","content":[{"type":"input_text","text":"hi"}],'
        b'"status":"completed"}\n'
    )
    answer = await alice.http.post("/v1/conversations/import", content=file, headers=JSONL)
    assert answer.status_code == 200, answer.text
    client = alice.openai()
    conversation = await client.conversations.retrieve(answer.json()["id"])
    assert conversation.created_at == 1700000000
    assert conversation.metadata == {"a": "b"}
    items = await client.conversations.items.list(conversation.id, order="asc")
    (item,) = items.data
    assert item.id != "msg_x"
    assert item.model_dump(exclude_none=True)["content"] == [{"type": "input_text", "text": "hi"}]


async def test_a_hand_written_import_replays_as_openrouter_needs_and_lists_in_openais_shape(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """A file no export wrote may hold string contents and assistant messages without id or status (OpenAI's
    EasyInputMessage). They are stored as the items API stores such input: OpenRouter refuses an assistant
    message without its id and status in the history, which would refuse every later turn of the copy."""
    file = (
        b'{"object": "conversation"}\n'
        b'{"type": "message", "role": "user", "content": "hello"}\n'
        b'{"type": "message", "role": "assistant", "content": "hi there"}\n'
        b'{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "more"}]}\n'
        b'{"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "as input"}]}\n'
    )
    answer = await alice.http.post("/v1/conversations/import", content=file, headers=JSONL)
    assert answer.status_code == 200, answer.text
    conversation = answer.json()["id"]
    await turn(alice.http, "next", conversation=conversation)
    hello, hi_there, more, as_input, _ = fake_upstream.inputs[0]
    # A client's message goes as the items API stores one: without an id (it had one in its JSON, sent upstream).
    assert hello == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    assert hi_there["content"] == [{"type": "output_text", "text": "hi there", "annotations": []}]
    # As the items API stores it: an assistant message goes upstream as output, with output_text parts.
    assert as_input["content"] == [{"type": "output_text", "text": "as input", "annotations": []}]
    for replayed in (hi_there, more, as_input):
        assert replayed["id"].startswith("msg_") and replayed["status"] == "completed", replayed
    listed = (await alice.http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()
    check("ConversationItemList", listed)
    assert [item["id"] for item in listed["data"][1:4]] == [hi_there["id"], more["id"], as_input["id"]]
    # Its export is what the copy now holds, and imports again to the same replay.
    lines = await _export(alice, conversation)
    again = await alice.http.post("/v1/conversations/import", content=b"\n".join(lines), headers=JSONL)
    await turn(alice.http, "next", conversation=again.json()["id"])
    assert without_ids(fake_upstream.inputs[1][:5]) == without_ids(fake_upstream.inputs[0])


async def test_a_hand_written_message_without_a_type_is_stored_as_the_items_api_stores_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """OpenAI's EasyInputMessage has no required `type`; the items API takes such a message, and the docs say a
    hand-written file may hold one, but its import was refused: "an item needs a string 'type'"."""
    easy = [{"role": "user", "content": "no type"}, {"role": "assistant", "content": "typed by role"}]
    file = b'{"object": "conversation"}\n' + b"".join(json.dumps(item).encode() + b"\n" for item in easy)
    imported = await alice.http.post("/v1/conversations/import", content=file, headers=JSONL)
    assert imported.status_code == 200, imported.text
    added = await new_conversation(alice.http, items=easy)
    stored = {}
    for conversation in (imported.json()["id"], added):
        bodies = await rows(db, "SELECT body FROM item WHERE conversation_id = :c ORDER BY position", c=conversation)
        stored[conversation] = [without_ids([json.loads(row["body"])]) for row in bodies]
        await turn(alice.http, "next", conversation=conversation)
    assert stored[imported.json()["id"]] == stored[added]
    assert without_ids(fake_upstream.inputs[0]) == without_ids(fake_upstream.inputs[1])
    assert fake_upstream.inputs[0][0] == {
        "role": "user",
        "content": [{"type": "input_text", "text": "no type"}],
        "type": "message",
    }


async def test_an_export_of_upstream_items_of_any_type_imports_and_replays(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    future = {"type": "hologram_call", "id": "holo_1", "status": "completed", "payload": {"x": 1}}
    parts = [{"type": "output_text", "text": "a", "annotations": []}, {"type": "output_hologram", "frames": 2}]
    message = {"type": "message", "id": "msg_h", "role": "assistant", "status": "completed", "content": parts}
    fake_upstream.reply_json(response_with_output([future, message]))
    conv = await new_conversation(alice.http)
    await turn(alice.http, "show me", conversation=conv)
    lines = await _export(alice, conv)
    answer = await alice.http.post("/v1/conversations/import", content=b"\n".join(lines), headers=JSONL)
    assert answer.status_code == 200, answer.text
    await turn(alice.http, "next", conversation=answer.json()["id"])
    replayed = fake_upstream.inputs[1]
    assert [item["type"] for item in replayed] == ["message", "hologram_call", "message", "message"]
    assert replayed[1]["payload"] == future["payload"] and replayed[2]["content"] == parts


async def test_a_bad_line_is_a_400_naming_it_and_nothing_is_imported(alice: Tenant, db: AsyncEngine) -> None:
    header = b'{"object":"conversation","id":"conv_1","created_at":1700000000,"metadata":{}}'
    good = b'{"type":"message","role":"user","content":"hi"}'
    cases = [
        (header + b"\n" + good + b"\n{not json}\n", 3),
        (header + b"\n" + good + b"\n[1,2]\n", 3),
        (header + b"\n\n" + good + b"\n\n{not json}\n", 5),  # blank lines are skipped, and counted
        (b"\n \r\n\n", 1),
        (header + b'\n{"role":"user"}\n', 2),
        (header + b'\n{"type":"message","role":"robot","content":"x"}\n', 2),
        (header + b'\n{"type":"message","role":"user","content":"x","status":"a\\u0000b"}\n', 2),
        (good + b"\n", 1),
        (b'{"object":"conversation","metadata":{"k":1}}\n', 1),
        (b'{"object":"conversation","created_at":"yesterday"}\n', 1),
        (b'{"object":"conversation","created_at":10000000000000}\n', 1),  # past year 9999: PostgreSQL refuses it
        (header + b'\n{"type":"message","role":"user","content":[5]}\n', 2),
        (header + b'\n{"type":"message","role":"user","content":[{"type":"output_text","text":"x"}]}\n', 2),
        (header + b'\n{"type":"function_call_output","call_id":"c","output":5}\n', 2),
        (header + b'\n{"type":"function_call"}\n', 2),
        (header + b'\n{"type":"bogus"}\n', 2),  # by hand, as the items API refuses it
        (header + b'\n{"type":"item_reference","id":"msg_1"}\n', 2),
        (header + b'\n{"type":"message","role":"user","content":' + b"[" * 70 + b"]" * 70 + b"}\n", 2),
        (header + b"\n" + b"[" * 5000 + b"]" * 5000 + b"\n", 2),
        (b'{"object":"conversation","created_at":9223372036854775808}\n', 1),
        (b"", 1),
        (header + b"\n" + header + b"\n", 2),
        # What the items API refuses in a column or a status, a later turn could not send upstream either.
        (header + b'\n{"type":"message","role":"user","content":"x","status":"weird"}\n', 2),
        (header + b'\n{"type":"message","role":"user","content":"x","status":"' + b"z" * 300 + b'"}\n', 2),
        (header + b'\n{"type":"' + b"x" * 300 + b'"}\n', 2),
        (header + b"\n" + good + b'\n{"type":"message","role":"user","content":"x","id":"' + b"m" * 300 + b'"}\n', 3),
        (header + b'\n{"type":"function_call","call_id":"c","name":"f","arguments":"{}","status":"done"}\n', 2),
        # Nor a content part's fields, as the items API checks them.
        (header + b'\n{"type":"message","role":"user","content":[{"type":"input_image","image_url":5}]}\n', 2),
        (
            header + b'\n{"type":"message","role":"system","content":[{"type":"input_image","image_url":"https://x",'
            b'"detail":"ultra"}]}\n',
            2,
        ),
    ]
    for body, line in cases:
        answer = await alice.http.post("/v1/conversations/import", content=body, headers=JSONL)
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["message"].startswith(f"Line {line}: "), (body, error)
        assert error["param"] == f"line {line}"
        assert error["type"] == "invalid_request_error"
    assert await rows(db, "SELECT id FROM conversation") == []
    assert await rows(db, "SELECT id FROM item") == []
    # An operators' export of many conversations, sent here: said so, rather than "an item needs a type".
    many = header + b"\n" + good + b"\n" + header + b"\n" + good + b"\n"
    answer = await alice.http.post("/v1/conversations/import", content=many, headers=JSONL)
    assert "a second conversation's header" in answer.json()["error"]["message"], answer.text


async def test_blank_lines_crlf_and_a_byte_order_mark_are_read_as_editors_write_them(
    alice: Tenant, db: AsyncEngine
) -> None:
    body = (
        b'\xef\xbb\xbf{"object":"conversation","metadata":{"k":"v"}}\r\n'
        b"\r\n"
        b'{"type":"message","role":"user","content":"first"}\r\n'
        b"\n   \n"
        b'{"type":"message","role":"user","content":"second"}\n\n'
    )
    answer = await alice.http.post("/v1/conversations/import", content=body, headers=JSONL)
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"] == {"k": "v"}
    stored = await rows(db, "SELECT body::jsonb->'content'->0->>'text' AS content FROM item ORDER BY position")
    assert stored == [{"content": "first"}, {"content": "second"}]


async def test_a_line_with_a_lone_surrogate_is_refused_for_that_reason(alice: Tenant, db: AsyncEngine) -> None:
    """msgspec calls a lone surrogate "Input data was truncated"; the line is told what a request body is told."""
    header = b'{"object":"conversation","metadata":{}}'
    cases = [
        (b'{"type":"message","role":"user","content":"a \\ud800 b"}', "contains a lone UTF-16 surrogate"),
        (b'{"type":"message","role":"user","content":"x",}', "not valid JSON: "),
        (b'{"type":"message","role":"user","content":"\xff"}', "not valid UTF-8 (byte "),
    ]
    for line, reason in cases:
        answer = await alice.http.post("/v1/conversations/import", content=header + b"\n" + line + b"\n", headers=JSONL)
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]["message"]
        assert message.startswith(f"Line 2: {reason}"), message
        assert "truncated" not in message
    assert await rows(db, "SELECT id FROM conversation") == []


async def test_an_import_beyond_the_conversation_caps_is_refused_at_the_line_crossing_them(
    start_server: Callable[..., LiveServer],
    make_tenant: Callable[..., Awaitable[Tenant]],
    db: AsyncEngine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An import used to create a conversation of any size (200,000 items under a cap of 100,000), which no
    append or turn could then add to."""
    live = start_server(max_conversation_items=3, max_conversation_bytes=2500)
    alice = await make_tenant("alice", live=live)
    header = json.dumps({"object": "conversation", "metadata": {}})
    short = [json.dumps({"type": "message", "role": "user", "content": f"m{n}"}) for n in range(4)]
    long = [json.dumps({"type": "message", "role": "user", "content": f"m{n} " + "x" * 1000}) for n in range(3)]
    for items, line, what in (
        (short, 5, "would hold 4 items; at most 3 (MAX_CONVERSATION_ITEMS)"),
        (long, 4, "bytes of items; at most 2500 (MAX_CONVERSATION_BYTES)"),
    ):
        body = ("\n".join([header, *items]) + "\n").encode()
        answer = await alice.http.post("/v1/conversations/import", content=body, headers=JSONL)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "conversation_too_large"
        assert error["param"] == f"line {line}"
        assert error["message"].startswith(f"Line {line}: the imported conversation would hold "), error
        assert what in error["message"]
    assert await rows(db, "SELECT id FROM conversation") == []
    within = ("\n".join([header, *short[:3]]) + "\n").encode()
    assert (await alice.http.post("/v1/conversations/import", content=within, headers=JSONL)).status_code == 200

    # An admin import or `convstore import` of many conversations: each within the caps, else nothing.
    two = within + ("\n".join([header, *short]) + "\n").encode()  # the second one's 4th item is line 9
    admin_headers = {"Authorization": f"Bearer {live.settings.admin_api_key}", **JSONL}
    async with httpx.AsyncClient(base_url=live.url, headers=admin_headers, timeout=30) as admin:
        assert (await admin.post("/admin/tenants/alice/import", content=within + within)).status_code == 200
        refused = await admin.post("/admin/tenants/alice/import", content=two)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "conversation_too_large"
    assert refused.json()["error"]["message"].startswith("Line 9: ")
    monkeypatch.setenv("MAX_CONVERSATION_ITEMS", "3")
    failed = service_cli(database_url, "import", "-", "--tenant", "alice", stdin=two)
    assert failed.returncode == 2
    assert b"Line 9: the imported conversation would hold 4 items" in failed.stderr, failed.stderr
    assert b"nothing was imported" in failed.stderr
    assert len(await rows(db, "SELECT id FROM conversation")) == 3


async def test_import_needs_json_lines_content_type(alice: Tenant) -> None:
    answer = await alice.http.post(
        "/v1/conversations/import", content=b'{"object":"conversation"}\n', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "unsupported_media_type"


async def test_an_export_cut_short_at_a_line_boundary_is_refused_not_imported_as_a_shorter_one(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """Every line of a transfer broken off between two lines is whole: a client that kept what it received
    imported it as a complete conversation with its last items missing. The export now ends with its end line,
    which the header announces, and the count in it must match."""
    conv = await _rich_conversation(alice, fake_upstream)
    lines = await _export(alice, conv)
    conversations_before = len(await rows(db, "SELECT id FROM conversation"))
    for kept in range(1, len(lines)):
        cut = await alice.http.post("/v1/conversations/import", content=b"\n".join(lines[:kept]) + b"\n", headers=JSONL)
        assert cut.status_code == 400, (kept, cut.text)
        error = cut.json()["error"]
        assert error["param"] == f"line {kept}" and error["code"] == "invalid_jsonl", (kept, error)
        assert "the end line of the conversation that starts on line 1" in error["message"]
        assert "cut short" in error["message"]
    # A line lost in the middle: the end line's count tells.
    missing = [*lines[:3], *lines[4:]]
    refused = await alice.http.post("/v1/conversations/import", content=b"\n".join(missing), headers=JSONL)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        f"Line {len(missing)}: the conversation's end line counts 9 items, but 8 lines before it since its header "
        "on line 1 hold items: lines are missing"
    )
    after_end = [*lines, lines[1]]
    refused = await alice.http.post("/v1/conversations/import", content=b"\n".join(after_end), headers=JSONL)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == f"line {len(after_end)}"
    announced = json.loads(lines[0])
    bad_header = [json.dumps({**announced, "ends_with": "eof"}).encode(), *lines[1:]]
    refused = await alice.http.post("/v1/conversations/import", content=b"\n".join(bad_header), headers=JSONL)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "line 1"
    assert len(await rows(db, "SELECT id FROM conversation")) == conversations_before
    # Written by hand, without the announcement nor the end line, a file imports as before.
    by_hand = [json.dumps({k: v for k, v in announced.items() if k != "ends_with"}).encode(), *lines[1:-1]]
    answer = await alice.http.post("/v1/conversations/import", content=b"\n".join(by_hand), headers=JSONL)
    assert answer.status_code == 200, answer.text
    assert len(await _export(alice, answer.json()["id"])) == len(lines)


async def test_lines_of_two_exports_spliced_together_are_refused_though_their_counts_match(
    alice: Tenant, db: AsyncEngine
) -> None:
    """A header of one export with the items and end line of another of the same length counted right: the end
    line names its conversation, which must be the header's."""
    first = await new_conversation(alice.http, items=[user("a1"), user("a2")])
    second = await new_conversation(alice.http, items=[user("b1"), user("b2")])
    a, b = await _export(alice, first), await _export(alice, second)
    conversations_before = len(await rows(db, "SELECT id FROM conversation"))
    spliced = await alice.http.post("/v1/conversations/import", content=b"\n".join([a[0], *b[1:]]), headers=JSONL)
    assert spliced.status_code == 400, spliced.text
    assert spliced.json()["error"] == {
        "message": f"Line 4: this end line is conversation '{second}''s, but the conversation that starts on line 1 "
        f"is '{first}': lines of two exports were joined",
        "type": "invalid_request_error",
        "param": "line 4",
        "code": "invalid_jsonl",
    }
    assert len(await rows(db, "SELECT id FROM conversation")) == conversations_before
    # A hand-written file's header may name no id, or another kind of value: nothing to compare.
    for header in ({"object": "conversation", "ends_with": "conversation.end"}, {**json.loads(a[0]), "id": 7}):
        taken = await alice.http.post(
            "/v1/conversations/import", content=b"\n".join([json.dumps(header).encode(), *b[1:]]), headers=JSONL
        )
        assert taken.status_code == 200, taken.text


async def test_export_of_another_tenants_conversation_is_404(alice: Tenant, bob: Tenant) -> None:
    conv = await new_conversation(alice.http, items=[{"role": "user", "content": "secret"}])
    answer = await bob.http.get(f"/v1/conversations/{conv}/export")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == f"Conversation with id '{conv}' not found."
    assert (await alice.http.get("/v1/conversations/conv_missing/export")).status_code == 404


async def test_export_pages_through_long_conversations_in_order(alice: Tenant) -> None:
    conv = await new_conversation(alice.http)
    for start in range(0, 1050, 20):
        items = [{"role": "user", "content": f"m{n}"} for n in range(start, min(start + 20, 1050))]
        assert (await alice.http.post(f"/v1/conversations/{conv}/items", json={"items": items})).status_code == 200
    lines = await _export(alice, conv)
    texts: list[Any] = [json.loads(line)["content"][0]["text"] for line in lines[1:-1]]
    assert texts == [f"m{n}" for n in range(1050)]
    assert json.loads(lines[-1]) == {"object": "conversation.end", "id": conv, "items": 1050}


async def test_an_import_stored_in_several_parts_keeps_every_item_in_order(alice: Tenant, db: AsyncEngine) -> None:
    """Beyond the items one insert takes (5,000), the parts must continue each other's positions."""
    header = json.dumps({"object": "conversation", "id": "conv_src", "created_at": 1, "metadata": {}})
    items = [json.dumps({"type": "message", "role": "user", "content": f"m{n}"}) for n in range(12_345)]
    imported = await alice.http.post(
        "/v1/conversations/import", content="\n".join([header, *items]) + "\n", headers=JSONL
    )
    assert imported.status_code == 200, imported.text
    conv = imported.json()["id"]
    stored = await rows(db, "SELECT position, body FROM item WHERE conversation_id = :c ORDER BY position", c=conv)
    assert [row["position"] for row in stored] == list(range(12_345))
    contents = [json.loads(row["body"])["content"] for row in stored]
    assert contents == [[{"type": "input_text", "text": f"m{n}"}] for n in range(12_345)]
    counted = await rows(db, "SELECT item_count, next_position FROM conversation WHERE id = :c", c=conv)
    assert counted == [{"item_count": 12_345, "next_position": 12_345}]


async def test_an_export_whose_conversation_is_deleted_while_it_streams_is_broken_off(
    alice: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """Each page is read apart (no connection is held while the client reads): a delete between two pages used to
    end the stream cleanly after the pages sent, a complete-looking part of the conversation."""
    caplog.set_level(logging.INFO)
    uvicorn_errors = logging.getLogger("uvicorn.error")  # its own handler, set as the server starts
    uvicorn_errors.addHandler(caplog.handler)
    lines = [json.dumps({"object": "conversation", "metadata": {}})]
    lines += [
        json.dumps({"type": "message", "role": "user", "content": f"item {n} " + "y" * 9000}) for n in range(3000)
    ]
    imported = await alice.http.post(
        "/v1/conversations/import",
        content=("\n".join(lines) + "\n").encode(),
        headers={"Content-Type": "application/jsonl"},
    )
    assert imported.status_code == 200, imported.text
    conversation = imported.json()["id"]
    received = b""
    with pytest.raises(httpx.HTTPError):
        async with alice.http.stream("GET", f"/v1/conversations/{conversation}/export") as export:
            assert export.status_code == 200
            chunks = export.aiter_bytes()
            received += await chunks.__anext__()
            assert (await alice.http.delete(f"/v1/conversations/{conversation}")).status_code == 200
            async for chunk in chunks:
                received += chunk
    assert 0 < received.count(b"\n") < 3001
    # Broken off by design, logged as such: not an "Exception in ASGI application" with its traceback.
    uvicorn_errors.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any(f"conversation {conversation} was deleted during its export" in r.getMessage() for r in caplog.records)


async def test_import_refuses_a_compaction_item_not_sealed_for_the_tenant(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    conv = await _rich_conversation(alice, fake_upstream)
    lines = await _export(alice, conv)
    (at,) = [n for n, line in enumerate(lines) if json.loads(line).get("type") == "compaction"]
    # Bob cannot import Alice's sealed summary: it is bound to her tenant.
    foreign = await bob.http.post("/v1/conversations/import", content=b"\n".join(lines) + b"\n", headers=JSONL)
    assert foreign.status_code == 400, foreign.text
    assert foreign.json()["error"]["param"] == f"line {at + 1}"
    assert foreign.json()["error"]["code"] == "invalid_encrypted_content"  # which rule, not only where
    forged_item = {**json.loads(lines[at]), "encrypted_content": "AAAA" + json.loads(lines[at])["encrypted_content"]}
    forged = [*lines[:at], json.dumps(forged_item).encode(), *lines[at + 1 :]]
    refused = await alice.http.post("/v1/conversations/import", content=b"\n".join(forged) + b"\n", headers=JSONL)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith(f"Line {at + 1}: ")
    assert len(await rows(db, "SELECT id FROM conversation")) == 1
