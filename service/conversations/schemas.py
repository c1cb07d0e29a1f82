"""The bodies of /v1/conversations, named as in OpenAI's specification."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from service.schemas import ItemObject, Metadata


class CreateConversationBody(msgspec.Struct):
    metadata: Metadata | None = None
    items: Annotated[list[ItemObject], msgspec.Meta(max_length=20)] | None = None


class UpdateConversationBody(msgspec.Struct):
    metadata: Metadata


class CreateConversationItemsBody(msgspec.Struct):
    items: Annotated[list[ItemObject], msgspec.Meta(min_length=1, max_length=20)]


class ConversationResource(msgspec.Struct):
    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: Metadata


class DeletedConversationResource(msgspec.Struct):
    id: str
    object: Literal["conversation.deleted"]
    deleted: bool


class ConversationItem(msgspec.Struct):
    """A stored item, as it was received or generated (open: every field of its type is kept)."""

    id: str
    type: str


class ConversationItemList(msgspec.Struct):
    """`first_id`/`last_id` are null when `data` is empty (OpenAI's schema has strings; there is no id to give)."""

    object: Literal["list"]
    data: list[ItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
