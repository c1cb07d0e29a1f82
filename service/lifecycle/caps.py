"""The conversation caps (MAX_CONVERSATION_ITEMS, MAX_CONVERSATION_BYTES: service/limits/sizes.py) on what an
import or a fork creates. Appends and turns refuse to take a conversation beyond them; an import or a fork that
would create one beyond them is refused before anything is written, else the cap (and the bound it puts on a
turn's memory) would not hold."""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InvalidRequest
from service.items import NewItem
from service.limits.sizes import ConversationCaps


@dataclass
class ImportTally:
    """One imported conversation's items so far. Its size is counted as appends count it: characters of
    stored JSON."""

    caps: ConversationCaps
    items: int = 0
    size: int = 0

    def add(self, line: int, item: NewItem) -> None:
        """Count the item of this line; refused here when it takes the conversation beyond a cap."""
        self.items += 1
        self.size += len(item.body)
        what = self.caps.breach(self.items, self.size)
        if what is not None:
            raise InvalidRequest(
                f"Line {line}: the imported conversation would hold {what}. Import its items up to an earlier "
                "line; the rest can go into a conversation of their own.",
                param=f"line {line}",
                code="conversation_too_large",
            )


def refuse_fork_beyond(caps: ConversationCaps, conversation_id: str, item_id: str, items: int, size: int) -> None:
    what = caps.breach(items, size)
    if what is not None:
        raise InvalidRequest(
            f"A fork of conversation '{conversation_id}' through item '{item_id}' would hold {what}. Fork it "
            "through an earlier item.",
            param="item_id",
            code="conversation_too_large",
        )
