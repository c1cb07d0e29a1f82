"""Images and files as clients send them: what is shown is OpenAI's shape; what goes upstream is what was sent,
but for an image's `detail`, which OpenRouter's schema requires (OpenAI's default, `auto`, when left out)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter
from tests.turn_support import MODEL

_IMAGE = {"type": "input_image", "image_url": "https://x/y.png", "detail": None}


def _details(item: dict[str, Any]) -> list[Any]:
    parts = item.get("content") or item.get("output") or []
    return [p["detail"] for p in parts if p.get("type") == "input_image"]


async def test_an_image_sent_with_a_null_detail_is_shown_with_its_default(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    # OpenAI's input schemas take `detail: null` (InputImageContentParamAutoParam); its items (InputImageContent)
    # always show one of the ImageDetail values, `auto` when none was chosen.
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "see"}, _IMAGE]},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [_IMAGE]},
    ]
    created = await alice.http.post("/v1/conversations", json={"items": items})
    assert created.status_code == 200, created.text
    conversation = created.json()["id"]
    listed = await alice.http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})
    assert [_details(item) for item in listed.json()["data"]] == [["auto"], [], ["auto"]]
    one = await alice.http.get(f"/v1/conversations/{conversation}/items/{listed.json()['data'][0]['id']}")
    assert _details(one.json()) == ["auto"]

    turn = await alice.http.post("/v1/responses", json={"model": MODEL, "input": [items[0]]})
    assert turn.status_code == 200, turn.text
    shown = await alice.http.get(f"/v1/responses/{turn.json()['id']}/input_items")
    assert _details(shown.json()["data"][0]) == ["auto"]
    # Sent upstream with OpenAI's default, which OpenRouter's schema requires.
    assert fake_upstream.inputs[0][0]["content"][1] == {**_IMAGE, "detail": "auto"}


_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
_TEXT = {"type": "input_text", "text": "see"}


def _message(part: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [_TEXT, part]}


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ({"type": "input_image", "image_url": "data:image/png;base64,!!!notbase64***"}, "image_url"),
        ({"type": "input_image", "image_url": "data:image/png;base64"}, "image_url"),
        ({"type": "input_image", "image_url": "hello world"}, "image_url"),
        ({"type": "input_image", "image_url": "ftp://example.com/a.png"}, "image_url"),
        ({"type": "input_image", "detail": "auto"}, None),
        ({"type": "input_file", "file_data": "data:application/pdf;base64,@@@@"}, "file_data"),
        ({"type": "input_file", "file_data": "not base64 at all"}, "file_data"),
        ({"type": "input_file", "file_url": "/relative/a.pdf"}, "file_url"),
        ({"type": "input_file", "file_id": "file-1", "detail": "ultra"}, "detail"),
        ({"type": "input_image", "image_url": "data:image/png; base64,@@@@"}, "image_url"),
        ({"type": "input_image", "image_url": "https://example.com:99999/a.png"}, "image_url"),
        ({"type": "input_image", "image_url": "https://exa mple.com/a.png"}, "image_url"),
        ({"type": "input_image", "image_url": " https://example.com/a.png"}, "image_url"),
        ({"type": "input_file", "file_data": "===="}, "file_data"),
        ({"type": "input_file", "file_data": ""}, "file_data"),
    ],
)
async def test_an_image_or_file_no_model_could_read_is_refused_naming_its_field_and_nothing_is_stored(
    alice: Tenant, fake_upstream: FakeOpenRouter, part: dict[str, Any], field: str | None
) -> None:
    """Stored through the items API, such a part went upstream on every later turn: each failed with the
    upstream's 400, which named no item."""
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    where = "items[0].content[1]"
    added = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [_message(part)]})
    assert added.status_code == 400, added.text
    error = added.json()["error"]
    assert error["param"] == (f"{where}.{field}" if field else where)
    assert error["type"] == "invalid_request_error"
    listed = await alice.http.get(f"/v1/conversations/{conversation}/items")
    assert listed.json()["data"] == []
    turn = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": [_message(part)], "conversation": conversation}
    )
    assert turn.status_code == 400, turn.text
    assert turn.json()["error"]["param"] == error["param"].replace("items[0]", "input[0]")
    assert fake_upstream.requests == []


async def test_images_and_files_as_clients_send_them_are_taken_and_sent_as_sent_with_an_images_detail(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    parts = [
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{_PNG}=="},
        # As the `base64` tool writes it, wrapped.
        {"type": "input_image", "image_url": f"DATA:image/png;base64,{_PNG[:20]}\n{_PNG[20:]}=="},
        {"type": "input_image", "file_id": "file-img"},
        {"type": "input_file", "file_data": f"data:application/pdf;base64,{_PNG}==", "filename": "a.pdf"},
        {"type": "input_file", "file_data": f"{_PNG}==", "filename": "b.pdf"},
        {"type": "input_file", "file_url": "http://example.com/c.pdf", "detail": "high"},
        {"type": "input_file", "file_id": "file-pdf"},
        {"type": "input_image", "image_url": "HTTPS://[::1]:8443/a.png?x=1"},
        {"type": "input_image", "image_url": f"data:image/png;name=a.png;base64, {_PNG}%3D%3D"},
    ]
    message = {"type": "message", "role": "user", "content": [_TEXT, *parts]}
    turn = await alice.http.post("/v1/responses", json={"model": MODEL, "input": [message]})
    assert turn.status_code == 200, turn.text
    # As sent, but for an image's detail, which OpenRouter's schema requires: OpenAI's default when left out.
    sent = [
        {**part, "detail": "auto"} if part["type"] == "input_image" and "detail" not in part else part for part in parts
    ]
    assert fake_upstream.inputs[0][0]["content"][1:] == sent


async def test_a_custom_tool_outputs_parts_are_checked_as_a_function_outputs_are(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """Stored through the items API, a custom tool output's image part went upstream unchecked on every turn."""
    conversation = (await alice.http.post("/v1/conversations", json={})).json()["id"]
    bad = {"type": "custom_tool_call_output", "call_id": "c1", "output": [{"type": "input_image", "image_url": "x"}]}
    refused = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [bad]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "items[0].output[0].image_url"
    good = {**bad, "output": [{"type": "input_image", "image_url": "https://x/y.png"}]}
    added = await alice.http.post(f"/v1/conversations/{conversation}/items", json={"items": [good]})
    assert added.status_code == 200, added.text
    assert added.json()["data"][0]["output"][0]["detail"] == "auto"
