"""A cap on a conversation's stored size: items and bytes of stored JSON (MAX_CONVERSATION_ITEMS,
MAX_CONVERSATION_BYTES). A turn or an append that would start beyond it gets 400 `conversation_too_large`,
pointing to the ways out (compaction stores an item and deletes none, so it is not one); the last turn within
it may take it over (its output is not known in advance), so the cap bounds a conversation to about itself plus
one turn. A `previous_response_id` chain's history (what a turn continuing a response sends) is held to the
same cap, with the same code.

A turn's memory is a multiple of its history (read as one text, which is kept and sent upstream from), so the
cap is also what bounds one turn's memory."""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidRequest


@dataclass(frozen=True)
class ConversationCaps:
    max_items: int = 0  # 0: no cap
    max_bytes: int = 0

    def breach(self, items: int, size: int) -> str | None:
        """What a conversation of `items` items and `size` bytes would hold beyond a cap, or None."""
        if self.max_items and items > self.max_items:
            return f"{items} items; at most {self.max_items} (MAX_CONVERSATION_ITEMS)"
        if self.max_bytes and size > self.max_bytes:
            return f"{size} bytes of items; at most {self.max_bytes} (MAX_CONVERSATION_BYTES)"
        return None

    def excess(self, conversation_id: str, items: int, size: int, *, param: str) -> InvalidRequest | None:
        """The refusal for a conversation that would hold `items` items and `size` bytes, or None."""
        what = self.breach(items, size)
        if what is None:
            return None
        return InvalidRequest(
            f"Conversation '{conversation_id}' would hold {what}. Delete items it no longer needs, or continue in "
            "a new conversation: POST /v1/responses/compact answers this one's user messages and a summary, "
            "which a new conversation can start from (compaction and truncation shorten what is sent upstream, "
            "not what is stored).",
            param=param,
            code="conversation_too_large",
        )

    def chain_excess(self, previous_response_id: str, items: int, size: int) -> InvalidRequest | None:
        """The refusal for a turn continuing `previous_response_id` whose history and input would hold `items`
        items and `size` bytes, or None."""
        what = self.breach(items, size)
        if what is None:
            return None
        return InvalidRequest(
            f"Continuing response '{previous_response_id}' would send {what}. Continue from an earlier response, "
            "or start a new chain: POST /v1/responses/compact with this previous_response_id answers the chain's "
            "user messages and a summary, which a new turn can start from (truncation shortens what is sent "
            "upstream, not what is read).",
            param="previous_response_id",
            code="conversation_too_large",
        )
