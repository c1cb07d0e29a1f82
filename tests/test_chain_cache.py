"""The worker's cache of `previous_response_id` chains (service/responses/chain_cache.py): an entry holds its
parent's entry and its own items, not a copy of the history, and the budget counts what the entries hold alive.
What goes upstream through it is checked end to end in tests/test_chain_history.py."""

from __future__ import annotations

import gc
from array import array

from service.responses.chain_cache import MAX_LINKS, ChainCache, ChainHistory

_ITEM = "x" * 400  # about one stored message


def _turn_items(n: int) -> tuple[list[str], list[int]]:
    """The input and output item texts of turn n, and their counts."""
    return [f'{{"q":{n}}}{_ITEM}', f'{{"a":{n}}}{_ITEM}'], [n, n + 1]


def _expected(turns: range) -> tuple[str, array[int]]:
    texts: list[str] = []
    counts = array("q")
    for n in turns:
        more, more_counts = _turn_items(n)
        texts += more
        counts.extend(more_counts)
    return ",".join(texts), counts


def _chain(cache: ChainCache, turns: int, *, prefix: str = "resp") -> ChainHistory:
    """A linear chain of `turns` responses, each entry put as a finish puts it; returns the last one (as the
    turn continuing it holds it)."""
    entry = ChainHistory("tenant_a", 1, "")
    for n in range(turns):
        entry = entry.followed_by(*_turn_items(n))
        cache.put(f"{prefix}_{n}", entry)
    return entry


def test_every_entry_of_a_long_chain_gives_its_whole_history_in_order() -> None:
    cache = ChainCache(64 * 1024 * 1024)
    turns = 5 * MAX_LINKS + 3  # across several whole entries
    _chain(cache, turns)
    for n in range(turns):
        entry = cache.get(f"resp_{n}", "tenant_a", 1)
        assert entry is not None
        assert entry.whole() == _expected(range(n + 1))
        assert entry.links < MAX_LINKS  # the entries MAX_LINKS links away were made whole as they were joined


def test_a_linear_chain_holds_about_one_history_not_one_per_response() -> None:
    cache = ChainCache(64 * 1024 * 1024)
    turns = 200
    whole_text, _ = _chain(cache, turns).whole()
    assert len(cache) == turns
    # A copy per response would hold the sum of all the histories: 100 times the last one.
    assert cache.held_bytes < 10 * len(whole_text)


def test_branches_of_one_response_cost_their_own_items_not_a_history_each() -> None:
    cache = ChainCache(64 * 1024 * 1024)
    parent = _chain(cache, 100)
    turns = 100
    while parent.links < MAX_LINKS:  # the branches' parent as far from a whole entry as an entry can be
        parent = parent.followed_by(*_turn_items(turns))
        cache.put(f"resp_{turns}", parent)
        turns += 1
    expected_text, expected_counts = _expected(range(turns))
    before = cache.held_bytes
    for n in range(500):
        cache.put(f"branch_{n}", parent.followed_by(*_turn_items(1000 + n)))
    added = cache.held_bytes - before
    # Two items of ~400 bytes each, their counts and the entry, and the parent made whole once for all of them.
    assert added < 500 * 2_000 + 2 * len(expected_text)
    for n in (0, 7, 499):
        branch = cache.get(f"branch_{n}", "tenant_a", 1)
        assert branch is not None
        more, more_counts = _turn_items(1000 + n)
        assert branch.whole() == (",".join([expected_text, *more]), expected_counts + array("q", more_counts))


def test_what_is_held_stays_within_the_budget_and_eviction_frees_it() -> None:
    budget = 2 * 1024 * 1024
    cache = ChainCache(budget)
    for c in range(40):
        _chain(cache, 60, prefix=f"chain{c}")
        assert 0 < cache.held_bytes <= budget
    # The oldest chains went first; the newest one still gives its whole history.
    assert cache.get("chain0_59", "tenant_a", 1) is None
    newest = cache.get("chain39_59", "tenant_a", 1)
    assert newest is not None and newest.whole() == _expected(range(60))
    # Every entry discarded, and nothing else referring to them: nothing is held.
    for c in range(40):
        for n in range(60):
            cache.discard(f"chain{c}_{n}")
    del newest
    gc.collect()
    assert len(cache) == 0 and cache.held_bytes == 0


def test_an_entry_kept_alive_by_a_turn_in_flight_is_counted_until_the_turn_lets_go() -> None:
    cache = ChainCache(64 * 1024 * 1024)
    in_flight = _chain(cache, 3)
    for n in range(3):
        cache.discard(f"resp_{n}")
    assert cache.held_bytes > 0  # the turn continuing resp_2 still holds its history
    del in_flight
    gc.collect()
    assert cache.held_bytes == 0


def test_a_disabled_cache_keeps_nothing() -> None:
    cache = ChainCache(0)
    _chain(cache, 3)
    assert len(cache) == 0 and cache.held_bytes == 0
