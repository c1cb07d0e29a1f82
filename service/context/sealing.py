"""Compaction items are ours: their `encrypted_content` is the summary sealed with a key only the service holds
(AES-256-GCM), with the tenant bound in as associated data, so a client can hand an item back (a round trip)
but cannot read, forge or alter one, nor use another tenant's.

The key is COMPACTION_KEY (hashed to 256 bits) when set, else one generated at first need and kept in the
`service_secret` table, shared by every process of the service. A key change must not strand the conversations
holding items sealed before it (their every turn would be refused): items are opened with the current key, then
with COMPACTION_KEYS_PREVIOUS, then with the database's key if one was ever made; only the current key seals.
An entry of COMPACTION_KEYS_PREVIOUS may be another database's own key (`db:…`, as `convstore compaction-key`
prints it), so that an import of that database's export can open its items (service/lifecycle/resealing.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import DATABASE_KEY_PREFIX, database_key_bytes
from service.db.models import service_secret_table

_SECRET_NAME = "compaction_key"  # noqa: S105 - the row's name, not a secret
_PREFIX = "cs1."
_NONCE_BYTES = 12


class InvalidSeal(Exception):
    """The content was not sealed by this service for this tenant, or was altered since."""


class Summary(msgspec.Struct):
    text: str
    model: str


@dataclass
class Sealer:
    engine: AsyncEngine
    configured_key: str | None = None
    previous_keys: tuple[str, ...] = ()
    _aead: AESGCM | None = None
    _openers: list[AESGCM] | None = None  # the current key first, then the ones that only open
    _lock: asyncio.Lock | None = None

    async def seal(self, tenant_id: str, summary: Summary) -> str:
        return _sealed(await self._key(), tenant_id, summary)

    async def open(self, tenant_id: str, content: object) -> Summary:
        return _opened(await self._opening_keys(), tenant_id, content)

    async def database_key(self) -> str | None:
        """The database's own key (None when it holds none) as COMPACTION_KEYS_PREVIOUS takes it: for a service
        that imports this database's export into another."""
        stored = await self._stored_key(create=False)
        return None if stored is None else DATABASE_KEY_PREFIX + base64.urlsafe_b64encode(stored).decode()

    async def resealer(self) -> Resealer:
        """Every key read now, so that the resealer needs no database connection of its own (an import holds
        its transaction's)."""
        return Resealer(await self._key(), tuple(await self._opening_keys()))

    async def _opening_keys(self) -> list[AESGCM]:
        if self._openers is None:
            current = await self._key()
            older = [AESGCM(database_key_bytes(key) or _hashed(key)) for key in self.previous_keys]
            if self.configured_key:
                stored = await self._stored_key(create=False)
                older += [AESGCM(stored)] if stored is not None else []
            self._openers = [current, *older]
        return self._openers

    async def _key(self) -> AESGCM:
        if self._aead is not None:
            return self._aead
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._aead is None:
                if self.configured_key:
                    key = _hashed(self.configured_key)
                else:
                    stored = await self._stored_key(create=True)
                    if stored is None:
                        raise RuntimeError("the service_secret table holds no compaction key")
                    key = stored
                self._aead = AESGCM(key)
        return self._aead

    async def _stored_key(self, *, create: bool) -> bytes | None:
        """The database's key; the first process to need one makes it (the others then read that one)."""
        async with self.engine.begin() as conn:
            if create:
                await conn.execute(
                    insert(service_secret_table)
                    .values(name=_SECRET_NAME, value=AESGCM.generate_key(bit_length=256))
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            key = await conn.scalar(
                select(service_secret_table.c.value).where(service_secret_table.c.name == _SECRET_NAME)
            )
        return key if isinstance(key, bytes) else None


@dataclass(frozen=True)
class Resealer:
    """Moves sealed summaries from one tenant to another, for the operators' imports: a backup restored into
    another database recreates its tenants with new ids, and the items sealed for the old ids would open for no
    one (every turn on their conversations refused)."""

    sealing: AESGCM
    opening: tuple[AESGCM, ...]

    def reseal(self, content: object, from_tenant_id: str, to_tenant_id: str) -> str:
        """Raises InvalidSeal when no key the service holds opens it for `from_tenant_id`."""
        return _sealed(self.sealing, to_tenant_id, _opened(self.opening, from_tenant_id, content))


def _sealed(aead: AESGCM, tenant_id: str, summary: Summary) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = aead.encrypt(nonce, msgspec.json.encode(summary), tenant_id.encode())
    return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def _opened(keys: Sequence[AESGCM], tenant_id: str, content: object) -> Summary:
    if not isinstance(content, str) or not content.startswith(_PREFIX):
        raise InvalidSeal
    try:
        raw = base64.urlsafe_b64decode(content[len(_PREFIX) :].encode())
    except (binascii.Error, ValueError):
        raise InvalidSeal from None
    for aead in keys:
        try:
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], tenant_id.encode())
            return msgspec.json.decode(plain, type=Summary)
        except InvalidTag:
            continue
        except (ValueError, msgspec.DecodeError):
            raise InvalidSeal from None
    raise InvalidSeal


def _hashed(configured: str) -> bytes:
    return hashlib.sha256(configured.encode()).digest()
