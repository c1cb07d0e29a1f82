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


# Tuples of the enum's members (each one a str), so that a check (`status in RUNNING`), a SQLAlchemy `in_()` and a
# driver's text[] parameter all take them as they are.
RUNNING = (Status.QUEUED, Status.IN_PROGRESS)
TERMINAL = (Status.COMPLETED, Status.INCOMPLETE, Status.FAILED, Status.CANCELLED)
# A response that answered (wholly or cut short by a limit): its items join its conversation, and a later
# response can continue it. A failed or cancelled one is kept, but is history for nobody.
ANSWERED = (Status.COMPLETED, Status.INCOMPLETE)


def is_answered(status: str) -> bool:
    return status in ANSWERED


def answered_sql(column: str) -> str:
    """The condition that `column` holds an answered status, for statements written as SQL text."""
    values = ", ".join(f"'{status.value}'" for status in ANSWERED)
    return f"{column} IN ({values})"
