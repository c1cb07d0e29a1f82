"""The context-window ledger's budget (service/context/ledger.py, HISTORY_CACHE_MB a second time) bounds the
memory its entries really take, measured by tracemalloc, not only their texts: every stored turn keeps an
entry, and an entry of a one-off response is mostly the objects around its text."""

from __future__ import annotations

import json
import tracemalloc

from service.context.ledger import TokenLedger


def _message(text: str) -> str:
    return json.dumps({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})


def test_a_ledger_full_of_one_off_responses_holds_about_its_budget() -> None:
    budget = 1024 * 1024
    ledger = TokenLedger(budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            response_id = f"resp_{n:040x}"  # the entry's key and its thread's root, as a turn's finish keeps it
            entry = ledger.counted(None, "").with_input([_message(f"question {n}")], [3])
            entry.root = response_id
            ledger.keep(response_id, entry)
        del entry
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ledger._entries) < 20_000  # the budget was reached
    assert held < budget * 5 // 4, f"{held} bytes held for a budget of {budget}"
