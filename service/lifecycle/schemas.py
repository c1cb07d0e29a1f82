"""The bodies of conversation export, import and fork."""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.schemas import Metadata


class ConversationExportLine(msgspec.Struct):
    """One line of an export: the first is `{"object": "conversation", "id", "created_at", "metadata"}`, each
    next one an item in order, exactly as the items API shows it."""

    id: str
    object: Annotated[str, msgspec.Meta(description="`conversation` on the first line")] | None = None
    type: Annotated[str, msgspec.Meta(description="The item's type, on item lines")] | None = None


class ForkConversationBody(msgspec.Struct):
    item_id: Annotated[str, msgspec.Meta(description="The last item kept")]
    metadata: Metadata | None = None
