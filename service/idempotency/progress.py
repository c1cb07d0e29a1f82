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
from typing import Protocol


class UnstoredStream(Protocol):
    """A streamed turn whose events are stored nowhere (store=false): its own frames are the only copy."""

    async def packed_stream(self) -> bytes:
        """Every frame, once the turn has ended, packed as a stored event log is (frame_log.inflated reads it)."""
        ...


@dataclass
class EffectTracker:
    key: str  # the request's Idempotency-Key, stored on the response its turn creates
    started: bool = False
    response_id: str | None = None
    conversation_id: str | None = None
    # The answer is the event stream of `response_id`, replayed from its stored event log (or followed live).
    streams_stored_response: bool = False
    # The answer is a stream stored nowhere: its bytes are taken from the run once it has ended.
    unstored_stream: UnstoredStream | None = None
    # The turn's outcome is kept in memory until the database takes it: the answer given now (503) stands only
    # until then; a replay answers with the stored response once it is there.
    outcome_deferred: bool = False


# A route that creates something declares `opt=IDEMPOTENT`: the middleware then honours an Idempotency-Key on it.
IDEMPOTENT = {"idempotent": True}

_current: ContextVar[EffectTracker | None] = ContextVar("idempotency_effect_tracker", default=None)


@contextmanager
def tracking(key: str) -> Iterator[EffectTracker]:
    """Track the current request; tasks it spawns copy the context and so share the tracker."""
    tracker = EffectTracker(key)
    token = _current.set(tracker)
    try:
        yield tracker
    finally:
        _current.reset(token)


def current_idempotency_key() -> str | None:
    """The key of the request being served. Its turn's response records it: should the process die after the
    turn was stored and before the key was completed, the key is completed from that response instead of being
    freed for a second run (service/idempotency/repository.py)."""
    tracker = _current.get()
    return tracker.key if tracker is not None else None


def note_effect(*, response_id: str | None = None) -> None:
    tracker = _current.get()
    if tracker is not None:
        tracker.started = True
        tracker.response_id = response_id or tracker.response_id


def note_stopped_before_answer() -> None:
    """The turn was stopped at shutdown before it had an answer, and stored as failed: its 503 is not kept, and a
    retry with the key runs afresh, as after a request whose connection the stop cut."""
    tracker = _current.get()
    if tracker is not None:
        tracker.started = False


def note_created(*, conversation_id: str) -> None:
    """The conversation the request created or added to."""
    tracker = _current.get()
    if tracker is not None:
        tracker.conversation_id = conversation_id


def note_stream(*, response_id: str | None, unstored: UnstoredStream | None) -> None:
    """The answer is a turn's event stream: the stored response's (`response_id`), or a run's stored nowhere."""
    tracker = _current.get()
    if tracker is not None:
        tracker.streams_stored_response = unstored is None and response_id is not None
        tracker.unstored_stream = unstored


def note_outcome_deferred() -> None:
    """The database could not take the turn's outcome; it is stored once the database is back."""
    tracker = _current.get()
    if tracker is not None:
        tracker.outcome_deferred = True
