"""A response's status, and what each status means for the turn path."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUNNING = frozenset({Status.QUEUED, Status.IN_PROGRESS})
TERMINAL = frozenset({Status.COMPLETED, Status.INCOMPLETE, Status.FAILED, Status.CANCELLED})
# A response that answered (wholly or cut short by a limit): its items join its conversation, and a later
# response can continue it. A failed or cancelled one is kept, but is history for nobody.
ANSWERED = frozenset({Status.COMPLETED, Status.INCOMPLETE})


def is_answered(status: str) -> bool:
    return status in ANSWERED
