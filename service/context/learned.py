"""Input budgets learned from providers' refusals, per model, in this process.

With `truncation: "auto"`, a turn the provider finds too long is tried again with less history
(service/context/service.py, `_refit`). Without memory, every later turn of the thread would start from its
whole history again: a model the catalog does not know, or whose provider's window is smaller than the catalog
says, would spend refused calls on every turn, and once a thread outgrew what the tries can shrink, fail on
every turn. So the budget a retry was given is where later turns on that model start.

It is kept for an hour, then learned again: a provider's window may grow, and OpenRouter routes one model to
providers with different windows. Within that time a budget goes down with each refusal, and up only to what a
call of that size was taken at: a refusal without numbers is scaled by a guess, which may fall below the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LEARNED_FOR_SECONDS = 3600.0
# Budgets are learned only from refusals of real calls, so the models are those clients use; the bound keeps a
# flood of model names from growing the table.
_MAX_MODELS = 1024


class LearnedBudgets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._budgets: dict[str, tuple[int, float]] = {}  # model -> (budget, when it was first learned)

    def get(self, model: str) -> int | None:
        learned = self._budgets.get(model)
        if learned is None:
            return None
        budget, since = learned
        if self._clock() - since > LEARNED_FOR_SECONDS:
            del self._budgets[model]
            return None
        return budget

    def taken(self, model: str, total: int) -> None:
        """The provider took `total` tokens (by our count) for this model: a budget learned below it was a guess
        too low, and would refuse such a turn before any call."""
        known = self.get(model)
        if known is not None and known < total:
            self._budgets[model] = (total, self._budgets[model][1])

    def lower(self, model: str, budget: int) -> None:
        """The provider refused more than `budget` tokens (by our count) for this model."""
        known = self.get(model)
        if known is not None:
            self._budgets[model] = (min(known, budget), self._budgets[model][1])
            return
        if len(self._budgets) >= _MAX_MODELS:
            self._budgets.pop(next(iter(self._budgets)))
        self._budgets[model] = (budget, self._clock())
