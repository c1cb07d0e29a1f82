"""Compaction items carried by the operators' imports. A compaction item's summary is sealed for its tenant's id
(service/context/sealing.py), and a backup restored into another database recreates its tenants with new ids:
kept as they were, the items would open for no tenant, and every turn on their conversations would be refused.
So these imports, which only operators make, seal each item again for the tenant it is imported into, from the
tenant it was sealed for. Tenants' own imports do not: they take only items sealed for themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from service.context.sealing import InvalidSeal, Resealer
from service.items import NewItem
from service.lifecycle import jsonl, repository


async def sealed_for(conn: AsyncConnection, header: jsonl.Header, to_tenant_id: str) -> list[str]:
    """The tenant ids the conversation's items may have been sealed for, likeliest first: the one its export
    named, the tenant of its name in this database (a file written before exports named the id), and the tenant
    it is imported into."""
    candidates = [header.tenant_id]
    if header.tenant is not None:
        candidates.append(await repository.tenant_id_by_name(conn, header.tenant))
    candidates.append(to_tenant_id)
    return list(dict.fromkeys(c for c in candidates if c is not None))


def carry_over(items: list[NewItem], sources: Sequence[str], to_tenant_id: str, resealer: Resealer) -> int:
    """Each compaction item among `items` sealed again for `to_tenant_id`, in place, from the first of
    `sources` it opens for. Returns how many opened for none: those are kept as they are (sealed with a key
    this service does not hold), and a turn on their conversation is refused until the item is deleted."""
    unopened = 0
    for index, item in enumerate(items):
        if item.type != "compaction":
            continue
        value = msgspec.json.decode(item.body)
        for source in sources:
            try:
                resealed = resealer.reseal(value.get("encrypted_content"), source, to_tenant_id)
            except InvalidSeal:
                continue
            body = msgspec.json.encode({**value, "encrypted_content": resealed}).decode()
            items[index] = dataclasses.replace(item, body=body)
            break
        else:
            unopened += 1
    return unopened
