"""Images and files as clients send them: what is shown is OpenAI's shape, what goes upstream is what was sent."""

from __future__ import annotations

from typing import Any

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
    # Stored and sent upstream as the client sent it.
    assert fake_upstream.inputs[0][0]["content"][1] == _IMAGE
