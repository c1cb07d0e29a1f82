"""Which conversations exist for the API. Two kinds of row are deleted for every API though still stored:

- one the retention purge has started to delete (`purging_since`): the purge removes its items over several
  transactions, and no one may read the part left or write to it meanwhile;
- one its tenant deleted while responses still need its items as their history (`deleted_at`): a chain
  continuing one of those responses replays what preceded it in the conversation, as OpenAI keeps a deleted
  conversation's items. The row goes with its last response.

Every statement that finds a conversation for a client, or lists conversations for an operator, carries this
condition. An operator looking up one conversation by its id also sees one its tenant deleted, marked as such
(`not_being_purged`): its responses name it, and what it keeps is their history."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Table, and_


def not_deleted(conversation: Table) -> ColumnElement[bool]:
    return and_(not_being_purged(conversation), conversation.c.deleted_at.is_(None))


def not_being_purged(conversation: Table) -> ColumnElement[bool]:
    return conversation.c.purging_since.is_(None)
