"""Whether the request being served has started work that must not run twice (a turn claimed, an upstream
call about to be made). The idempotency middleware opens a tracker around each keyed request; services mark
the point of no return with `note_effect()`. Without a tracker (no key sent) marking does nothing.

This is what decides whether an error answer is stored for replay: a request rejected before any effect
(validation, 404, 409 conversation_locked, database down) is forgotten so that a retry with the same key
runs afresh, as Stripe does; an error after the effect (the upstream failed, the turn was stored as failed)
is replayed, so that a retry never starts a second turn or a second charge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class EffectTracker:
    started: bool = False


_current: ContextVar[EffectTracker | None] = ContextVar("idempotency_effect_tracker", default=None)


@contextmanager
def tracking() -> Iterator[EffectTracker]:
    """Track the current request; tasks it spawns copy the context and so share the tracker."""
    tracker = EffectTracker()
    token = _current.set(tracker)
    try:
        yield tracker
    finally:
        _current.reset(token)


def note_effect() -> None:
    tracker = _current.get()
    if tracker is not None:
        tracker.started = True
