"""The bodies of conversation export, import and fork."""

from __future__ import annotations

from typing import Annotated

import msgspec

from service.conversations.schemas import ConversationResource
from service.schemas import Metadata


class ConversationExportLine(msgspec.Struct):
    """One line of an export: the first is `{"object": "conversation", "id", "created_at", "metadata"}`, each
    next one an item in order, exactly as the items API shows it."""

    id: str
    object: Annotated[str, msgspec.Meta(description="`conversation` on the first line")] | None = None
    type: Annotated[str, msgspec.Meta(description="The item's type, on item lines")] | None = None


class ForkConversationBody(msgspec.Struct, forbid_unknown_fields=True):
    item_id: Annotated[str, msgspec.Meta(description="The last item kept")]
    metadata: Metadata | None = None


class AdminExportLine(msgspec.Struct):
    """One line of an admin export: as ConversationExportLine, and each conversation's header names its tenant."""

    id: str
    object: Annotated[str, msgspec.Meta(description="`conversation` on a conversation's first line")] | None = None
    type: Annotated[str, msgspec.Meta(description="The item's type, on item lines")] | None = None
    tenant: Annotated[str, msgspec.Meta(description="The conversation's tenant, on its header line")] | None = None
    tenant_id: (
        Annotated[
            str,
            msgspec.Meta(
                description="The id of the conversation's tenant, on its header line: its compaction items are sealed"
                " for it, and an operators' import seals them again for the tenant it imports into"
            ),
        ]
        | None
    ) = None


class AdminExportQuery(msgspec.Struct):
    tenant: Annotated[str, msgspec.Meta(description="Only this tenant's conversations (its name or id)")] | None = None
    conversation: Annotated[str, msgspec.Meta(description="Only this conversation")] | None = None


class ConversationImportResult(msgspec.Struct):
    object: str
    tenant: str
    conversations: list[ConversationResource]
    items: Annotated[int, msgspec.Meta(description="Items imported, over every conversation")]
    unopened_compaction_items: Annotated[
        int,
        msgspec.Meta(
            description="Compaction items sealed with a key this service does not hold, imported as they were: a"
            " turn on their conversation is refused until the item is deleted (add the exporting service's"
            " COMPACTION_KEY, or its database's key as `convstore compaction-key` prints it, to"
            " COMPACTION_KEYS_PREVIOUS and import again)"
        ),
    ] = 0
