"""Whether the request being served has started work that must not run twice (a turn claimed, an upstream
call about to be made). The idempotency middleware opens a tracker around each keyed request; services mark
the point of no return with `note_effect()`, and handlers record what they created with `note_created()`, so
the key can be tied to it (a deleted response is not replayed). Without a tracker (no key sent) both do nothing.

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
    response_id: str | None = None
    conversation_id: str | None = None


# A route that creates something declares `opt=IDEMPOTENT`: the middleware then honours an Idempotency-Key on it.
IDEMPOTENT = {"idempotent": True}

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


def note_effect(*, response_id: str | None = None) -> None:
    tracker = _current.get()
    if tracker is not None:
        tracker.started = True
        tracker.response_id = response_id or tracker.response_id


def note_created(*, conversation_id: str) -> None:
    """The conversation the request created or added to."""
    tracker = _current.get()
    if tracker is not None:
        tracker.conversation_id = conversation_id
