"""previous_response_id chains: the exact input array sent upstream for long chains, branches, chains begun in a
conversation, deleted ancestors and store=false links; and the worker's chain cache (service/responses/
chain_cache.py) serving only current histories, to their own tenant. A second server (its own, empty cache)
continues the same chains, so both ways a history is found (the cache, and the read from the database) are
checked against each other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import LiveServer, Tenant
from tests.fake_openrouter import FakeOpenRouter, Reply, text_response, text_stream_events
from tests.reliability_support import a_request_waits_on_a_lock
from tests.turn_support import MODEL, assistant, new_conversation, rows, turn, user


def _answer(fake: FakeOpenRouter, label: str) -> dict[str, Any]:
    fake.reply_json(text_response(label, msg_id=f"msg_{label}"))
    return assistant(label, f"msg_{label}")


async def _cold(start_server: Callable[..., LiveServer], tenant: Tenant) -> httpx.AsyncClient:
    """The tenant's client on another instance of the service, whose chain cache starts empty."""
    other = start_server()
    return httpx.AsyncClient(base_url=other.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30)


async def test_a_chain_of_several_hundred_turns_replays_exactly_warm_and_cold(
    alice: Tenant, fake_upstream: FakeOpenRouter, start_server: Callable[..., LiveServer]
) -> None:
    expected: list[dict[str, Any]] = []
    previous: str | None = None
    ids = []
    for index in range(300):
        answer = _answer(fake_upstream, f"a{index}")
        fields = {} if previous is None else {"previous_response_id": previous}
        previous = (await turn(alice.http, f"q{index}", **fields))["id"]
        ids.append(previous)
        expected += [user(f"q{index}")]
        assert fake_upstream.inputs[-1] == expected
        expected += [answer]

    async with await _cold(start_server, alice) as cold:
        _answer(fake_upstream, "cold-end")
        await turn(cold, "from the end", previous_response_id=ids[-1])
        assert fake_upstream.inputs[-1] == [*expected, user("from the end")]
        _answer(fake_upstream, "cold-middle")
        await turn(cold, "from the middle", previous_response_id=ids[150])
        assert fake_upstream.inputs[-1] == [*expected[: 2 * 151], user("from the middle")]
        # Two responses below one the cold worker now holds: it continues from that one's history.
        _answer(fake_upstream, "cold-walk")
        await turn(cold, "two further down", previous_response_id=ids[152])
        assert fake_upstream.inputs[-1] == [*expected[: 2 * 153], user("two further down")]
    _answer(fake_upstream, "warm-middle")
    await turn(alice.http, "again from the middle", previous_response_id=ids[150])
    assert fake_upstream.inputs[-1] == [*expected[: 2 * 151], user("again from the middle")]


async def _streamed_turn(client: httpx.AsyncClient, fake: FakeOpenRouter, label: str, previous: str) -> str:
    """A streamed turn continuing `previous` (answered `label`); returns its response id."""
    fake.enqueue(Reply(kind="sse", events=text_stream_events(label, msg_id=f"msg_{label}")))
    body = {"model": MODEL, "input": f"q {label}", "previous_response_id": previous, "stream": True}
    async with client.stream("POST", "/v1/responses", json=body) as streamed:
        assert streamed.status_code == 200
        events = (await streamed.aread()).decode()
    assert "response.completed" in events
    return events.split('"id":"', 1)[1].split('"', 1)[0]


async def test_a_worker_continues_and_branches_a_chain_from_its_cache_and_a_cold_one_reads_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine, start_server: Callable[..., LiveServer]
) -> None:
    expected: list[dict[str, Any]] = []
    ids: list[str] = []
    for index in range(2 * 16 + 3):  # past two whole entries of the cache (chain_cache.MAX_LINKS)
        if ids and index % 3 == 0:  # streamed turns make their entries too
            ids.append(await _streamed_turn(alice.http, fake_upstream, f"c{index}", ids[-1]))
            expected += [user(f"q c{index}"), assistant(f"c{index}", f"msg_c{index}")]
            continue
        answer = _answer(fake_upstream, f"c{index}")
        fields = {"previous_response_id": ids[-1]} if ids else {}
        ids.append((await turn(alice.http, f"q c{index}", **fields))["id"])
        expected += [user(f"q c{index}"), answer]
    # Stored item texts never change, so a worker holding a chain's history does not read it again. Changing
    # the first one behind the service's back shows which turns read it.
    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE item SET body = :body WHERE response_id = :r AND NOT is_output"),
            {"body": json.dumps(user("changed behind the service's back")), "r": ids[0]},
        )
    for previous in (ids[-1], ids[3]):  # the end, and a branch further up
        _answer(fake_upstream, f"warm from {previous}")
        await turn(alice.http, "warm", previous_response_id=previous)
        assert fake_upstream.inputs[-1] == [*expected[: 2 * (ids.index(previous) + 1)], user("warm")]
    await _streamed_turn(alice.http, fake_upstream, "warm-streamed", ids[20])  # a streamed branch, from the cache
    assert fake_upstream.inputs[-1] == [*expected[:42], user("q warm-streamed")]
    async with await _cold(start_server, alice) as cold:
        _answer(fake_upstream, "cold")
        await turn(cold, "cold", previous_response_id=ids[20])
        assert fake_upstream.inputs[-1] == [user("changed behind the service's back"), *expected[1:42], user("cold")]


async def test_branches_replay_only_their_own_ancestors(
    alice: Tenant, fake_upstream: FakeOpenRouter, start_server: Callable[..., LiveServer]
) -> None:
    a_root = _answer(fake_upstream, "root")
    root = await turn(alice.http, "start")
    branches = []
    for name in ("left", "right", "middle"):
        answer = _answer(fake_upstream, name)
        branches.append((name, answer, await turn(alice.http, f"go {name}", previous_response_id=root["id"])))
        assert fake_upstream.inputs[-1] == [user("start"), a_root, user(f"go {name}")]
    (_, a_left, left), (_, a_right, right), _ = branches
    a_deeper = _answer(fake_upstream, "deeper")
    deeper = await turn(alice.http, "deeper left", previous_response_id=left["id"])
    left_chain = [user("start"), a_root, user("go left"), a_left, user("deeper left"), a_deeper]

    _answer(fake_upstream, "x1")
    await turn(alice.http, "more", previous_response_id=deeper["id"])
    assert fake_upstream.inputs[-1] == [*left_chain, user("more")]
    _answer(fake_upstream, "x2")
    await turn(alice.http, "more right", previous_response_id=right["id"])
    assert fake_upstream.inputs[-1] == [user("start"), a_root, user("go right"), a_right, user("more right")]

    async with await _cold(start_server, alice) as cold:
        _answer(fake_upstream, "x3")
        await turn(cold, "more", previous_response_id=deeper["id"])
        assert fake_upstream.inputs[-1] == [*left_chain, user("more")]
        _answer(fake_upstream, "x4")
        await turn(cold, "more right", previous_response_id=right["id"])
        assert fake_upstream.inputs[-1] == [user("start"), a_root, user("go right"), a_right, user("more right")]


async def test_many_clients_continuing_one_response_each_send_its_history(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    a_root = _answer(fake_upstream, "root")
    root = await turn(alice.http, "shared start")
    children = await asyncio.gather(
        *(turn(alice.http, f"regenerate {i}", previous_response_id=root["id"]) for i in range(8))
    )
    sent = sorted(fake_upstream.inputs[1:], key=lambda items: str(items[-1]))
    assert sent == sorted(([user("shared start"), a_root, user(f"regenerate {i}")] for i in range(8)), key=str)
    stored = await _stored_previous_links(alice, [c["id"] for c in children])
    assert stored == {c["id"]: root["id"] for c in children}


async def _stored_previous_links(tenant: Tenant, ids: list[str]) -> dict[str, str | None]:
    links = {}
    for response_id in ids:
        body = (await tenant.http.get(f"/v1/responses/{response_id}")).json()
        links[response_id] = body["previous_response_id"]
    return links


async def test_a_chain_begun_in_a_conversation_sees_an_item_deleted_from_it(
    alice: Tenant, fake_upstream: FakeOpenRouter, start_server: Callable[..., LiveServer], db: Any
) -> None:
    conversation = await new_conversation(alice.http)
    a1 = _answer(fake_upstream, "c1")
    await turn(alice.http, "in conversation 1", conversation=conversation)
    a2 = _answer(fake_upstream, "c2")
    in_conversation = await turn(alice.http, "in conversation 2", conversation=conversation)
    a3 = _answer(fake_upstream, "chained")
    chained = await turn(alice.http, "chained", previous_response_id=in_conversation["id"])
    assert fake_upstream.inputs[-1] == [user("in conversation 1"), a1, user("in conversation 2"), a2, user("chained")]

    # The chain's history is cached now; deleting the conversation's first user message changes it.
    (first,) = await rows(db, "SELECT id FROM item WHERE conversation_id = :c AND position = 0", c=conversation)
    deleted = await alice.http.delete(f"/v1/conversations/{conversation}/items/{first['id']}")
    assert deleted.status_code == 200
    after_delete = [a1, user("in conversation 2"), a2, user("chained"), a3, user("next")]
    _answer(fake_upstream, "n1")
    await turn(alice.http, "next", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == after_delete
    async with await _cold(start_server, alice) as cold:
        _answer(fake_upstream, "n2")
        await turn(cold, "next", previous_response_id=chained["id"])
        assert fake_upstream.inputs[-1] == after_delete


async def test_a_deleted_conversation_stays_the_history_of_chains_continuing_its_responses(
    alice: Tenant, fake_upstream: FakeOpenRouter, start_server: Callable[..., LiveServer]
) -> None:
    """OpenAI keeps a deleted conversation's items: a chain continuing one of its responses still replays what
    preceded that response, in a worker that cached the chain and in one that reads it."""
    conversation = await new_conversation(alice.http)
    a1 = _answer(fake_upstream, "c1")
    await turn(alice.http, "in conversation 1", conversation=conversation)
    a2 = _answer(fake_upstream, "c2")
    in_conversation = await turn(alice.http, "in conversation 2", conversation=conversation)
    a3 = _answer(fake_upstream, "chained")
    chained = await turn(alice.http, "chained", previous_response_id=in_conversation["id"])
    assert (await alice.http.delete(f"/v1/conversations/{conversation}")).status_code == 200
    after_delete = [user("in conversation 1"), a1, user("in conversation 2"), a2, user("chained"), a3, user("next")]
    _answer(fake_upstream, "n1")
    await turn(alice.http, "next", previous_response_id=chained["id"])
    assert fake_upstream.inputs[-1] == after_delete
    async with await _cold(start_server, alice) as cold:
        _answer(fake_upstream, "n2")
        await turn(cold, "next", previous_response_id=chained["id"])
        assert fake_upstream.inputs[-1] == after_delete


async def test_a_deleted_response_is_not_found_even_when_cached(alice: Tenant, fake_upstream: FakeOpenRouter) -> None:
    _answer(fake_upstream, "one")
    first = await turn(alice.http, "one")
    _answer(fake_upstream, "two")
    second = await turn(alice.http, "two", previous_response_id=first["id"])
    assert (await alice.http.delete(f"/v1/responses/{second['id']}")).status_code == 200
    gone = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "three", "previous_response_id": second["id"]}
    )
    assert gone.status_code == 400
    assert gone.json()["error"] == {
        "message": f"Previous response with id '{second['id']}' not found.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "previous_response_not_found",
    }
    assert len(fake_upstream.requests) == 2


async def test_another_tenant_cannot_continue_a_cached_response(
    alice: Tenant, bob: Tenant, fake_upstream: FakeOpenRouter, db: Any
) -> None:
    _answer(fake_upstream, "secret")
    first = await turn(alice.http, "alice's secret")
    _answer(fake_upstream, "cached")
    cached = await turn(alice.http, "now cached", previous_response_id=first["id"])
    for target in (first["id"], cached["id"]):
        answer = await bob.http.post(
            "/v1/responses", json={"model": MODEL, "input": "steal", "previous_response_id": target}
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "previous_response_not_found"
    assert len(fake_upstream.requests) == 2
    assert await rows(db, "SELECT id FROM response WHERE previous_response_id = :r", r=cached["id"]) == []


async def test_a_store_false_link_sends_the_history_and_cannot_be_continued(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: Any
) -> None:
    a1 = _answer(fake_upstream, "stored")
    first = await turn(alice.http, "stored turn")
    _answer(fake_upstream, "unstored")
    unstored = await turn(alice.http, "not stored", previous_response_id=first["id"], store=False)
    assert fake_upstream.inputs[-1] == [user("stored turn"), a1, user("not stored")]
    assert await rows(db, "SELECT id FROM response WHERE id = :r", r=unstored["id"]) == []
    after = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "after", "previous_response_id": unstored["id"]}
    )
    assert after.status_code == 400 and after.json()["error"]["code"] == "previous_response_not_found"
    _answer(fake_upstream, "again")
    await turn(alice.http, "again", previous_response_id=first["id"])
    assert fake_upstream.inputs[-1] == [user("stored turn"), a1, user("again")]


async def test_a_failed_response_cannot_be_continued_and_stays_out_of_the_cache(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    a1 = _answer(fake_upstream, "fine")
    first = await turn(alice.http, "fine")
    failing = text_response("partial", msg_id="msg_partial")
    failing["status"] = "failed"
    failing["error"] = {"code": "server_error", "message": "boom"}
    fake_upstream.reply_json(failing)
    failed = await turn(alice.http, "fails", previous_response_id=first["id"])
    assert failed["status"] == "failed"
    answer = await alice.http.post(
        "/v1/responses", json={"model": MODEL, "input": "more", "previous_response_id": failed["id"]}
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "previous_response_not_usable"
    _answer(fake_upstream, "retry")
    await turn(alice.http, "retry", previous_response_id=first["id"])
    assert fake_upstream.inputs[-1] == [user("fine"), a1, user("retry")]


async def test_counting_input_tokens_refuses_the_previous_responses_a_turn_refuses(
    alice: Tenant, fake_upstream: FakeOpenRouter
) -> None:
    """POST /v1/responses/input_tokens counts what a turn would send: for a previous response a turn could not
    continue (still running, failed), it answers what that turn would."""
    fake_upstream.enqueue(Reply(body=text_response("slow", msg_id="msg_slow"), delay=3.0))
    running = await alice.http.post("/v1/responses", json={"model": MODEL, "input": "slow", "background": True})
    assert running.status_code == 200 and running.json()["status"] == "queued", running.text
    await fake_upstream.received(1)  # the slow answer is the background turn's
    failing = text_response("partial")
    failing["status"] = "failed"
    failing["error"] = {"code": "server_error", "message": "boom"}
    fake_upstream.reply_json(failing)
    failed = await turn(alice.http, "fails")
    assert failed["status"] == "failed"
    for previous, status in ((running.json()["id"], ("queued", "in_progress")), (failed["id"], ("failed",))):
        body = {"model": MODEL, "input": "more", "previous_response_id": previous}
        counted = await alice.http.post("/v1/responses/input_tokens", json=body)
        refused = await alice.http.post("/v1/responses", json=body)
        assert counted.status_code == refused.status_code == 400, (counted.text, refused.text)
        error = counted.json()["error"]
        assert error == refused.json()["error"], (error, refused.json())
        assert error["code"] == "previous_response_not_usable" and error["param"] == "previous_response_id"
        assert any(f"status '{s}'" in error["message"] for s in status), error
    await fake_upstream.received(2)
    assert len(fake_upstream.requests) == 2  # the refused turns sent nothing


async def test_streamed_and_background_chain_turns_store_before_they_end_and_chain_on(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: Any
) -> None:
    a1 = _answer(fake_upstream, "first")
    first = await turn(alice.http, "first")
    fake_upstream.enqueue(Reply(kind="sse", events=text_stream_events("streamed", msg_id="msg_streamed")))
    async with alice.http.stream(
        "POST",
        "/v1/responses",
        json={"model": MODEL, "input": "stream it", "previous_response_id": first["id"], "stream": True},
    ) as streamed:
        assert streamed.status_code == 200
        text = (await streamed.aread()).decode()
    streamed_id = text.split('"id":"', 1)[1].split('"', 1)[0]
    assert fake_upstream.inputs[-1] == [user("first"), a1, user("stream it")]
    (row,) = await rows(db, "SELECT status, previous_response_id FROM response WHERE id = :r", r=streamed_id)
    assert row == {"status": "completed", "previous_response_id": first["id"]}
    _answer(fake_upstream, "after stream")
    await turn(alice.http, "after", previous_response_id=streamed_id)
    assert fake_upstream.inputs[-1] == [
        user("first"),
        a1,
        user("stream it"),
        assistant("streamed", "msg_streamed"),
        user("after"),
    ]


async def test_an_unseen_chain_turn_stores_its_response_and_items_whole_at_its_end(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: Any
) -> None:
    _answer(fake_upstream, "first")
    first = await turn(alice.http, "first")
    _answer(fake_upstream, "second")
    second = await turn(alice.http, [user("two"), user("inputs")], previous_response_id=first["id"])
    (row,) = await rows(
        db,
        "SELECT status, previous_response_id, conversation_id, completed_at >= created_at AS ordered "
        "FROM response WHERE id = :r",
        r=second["id"],
    )
    assert row == {"status": "completed", "previous_response_id": first["id"], "conversation_id": None, "ordered": True}
    stored = await rows(
        db,
        "SELECT is_output, ordinal, body FROM item WHERE response_id = :r ORDER BY is_output, ordinal",
        r=second["id"],
    )
    assert [(r["is_output"], r["ordinal"]) for r in stored] == [(False, 0), (False, 1), (True, 0)]
    listed = (await alice.http.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"})).json()
    assert [i["content"][0]["text"] for i in listed["data"]] == ["two", "inputs"]


async def test_a_previous_response_deleted_while_an_unseen_turn_runs_keeps_the_answer_without_the_link(
    alice: Tenant, fake_upstream: FakeOpenRouter, db: AsyncEngine
) -> None:
    """The turn began (its previous response was there) and the upstream answered: a delete of the previous
    response that is still committing when the turn is stored costs the link, never the answer."""
    _answer(fake_upstream, "first")
    first = await turn(alice.http, "first")
    fake_upstream.enqueue(Reply(kind="json", body=text_response("slow", msg_id="msg_slow"), delay=1.0))
    running = asyncio.create_task(
        alice.http.post("/v1/responses", json={"model": MODEL, "input": "Q2", "previous_response_id": first["id"]})
    )
    await fake_upstream.received(2)
    async with db.connect() as deleter:
        await deleter.execute(text("DELETE FROM response WHERE id = :id"), {"id": first["id"]})
        await a_request_waits_on_a_lock(db)  # the finish, on the row being deleted
        await deleter.commit()
    answer = await running
    assert answer.status_code == 200, answer.text
    stored = await rows(db, "SELECT status, previous_response_id FROM response WHERE id = :r", r=answer.json()["id"])
    assert stored == [{"status": "completed", "previous_response_id": None}]
    own = await rows(db, "SELECT is_output FROM item WHERE response_id = :r ORDER BY is_output", r=answer.json()["id"])
    assert own == [{"is_output": False}, {"is_output": True}]


async def test_with_the_chain_cache_off_every_turn_reads_its_history(
    make_tenant: Callable[..., Any], fake_upstream: FakeOpenRouter, start_server: Callable[..., LiveServer]
) -> None:
    tenant = await make_tenant("nocache", live=start_server(chain_history_cache_mb=0))
    expected: list[dict[str, Any]] = []
    previous: str | None = None
    for index in range(6):
        answer = _answer(fake_upstream, f"off{index}")
        fields = {} if previous is None else {"previous_response_id": previous}
        previous = (await turn(tenant.http, f"q{index}", **fields))["id"]
        expected += [user(f"q{index}")]
        assert fake_upstream.inputs[-1] == expected
        expected += [answer]
