"""Data that must not outlive its deletion: a deleted response kept hidden (a later response builds on it) is
not replayed through the Idempotency-Key of the request that created it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Tenant
from tests.fake_openrouter import FakeOpenRouter, text_response
from tests.turn_support import MODEL, rows


async def test_a_deleted_response_with_a_child_is_not_replayed_by_its_idempotency_key(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    request = {"model": MODEL, "input": "My password is ZEBRA-QUOKKA"}
    fake_upstream.reply_json(text_response("Noted: your password is ZEBRA-QUOKKA"))
    first = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-parent"})
    assert first.status_code == 200, first.text
    assert "ZEBRA" in first.text
    parent = first.json()["id"]
    child = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "And?", "previous_response_id": parent}
    )
    assert child.status_code == 200, child.text
    assert (await alice.http.delete(f"/v1/responses/{parent}")).status_code == 200
    assert await rows(db, "SELECT deleted_at IS NOT NULL AS hidden FROM response WHERE id = :r", r=parent) == [
        {"hidden": True}
    ]

    replay = await alice.http.post("/v1/responses", json=request, headers={"Idempotency-Key": "k-parent"})
    assert replay.status_code == 404, replay.text
    assert replay.json()["error"]["code"] == "not_found"
    assert "ZEBRA" not in replay.text
    assert len(fake_upstream.requests) == 2, "the retry ran the turn again"
    [kept] = await rows(db, "SELECT body FROM idempotency_key WHERE key = 'k-parent'")
    assert b"ZEBRA" not in bytes(kept["body"])
