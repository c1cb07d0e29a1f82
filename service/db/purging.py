"""A conversation the retention purge has started to delete (`purging_since` set) is deleted for every API: the
purge removes its items over several transactions, and no one may read the part left or write to it meanwhile.
Every statement that finds a conversation for a client or an operator carries this condition."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Table


def not_purging(conversation: Table) -> ColumnElement[bool]:
    return conversation.c.purging_since.is_(None)
