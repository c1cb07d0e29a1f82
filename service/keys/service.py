"""API keys: minted with 256 bits of randomness, stored only as SHA-256 (enough for high-entropy secrets),
compared in constant time, shown once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import InvalidRequest
from service.keys import repository

KEY_PREFIX = "sk-cs-"
_CACHE_TTL_SECONDS = 5.0
# A wrong key is remembered as wrong this long, so a client retrying it does not reach the database each time.
_MISS_TTL_SECONDS = 5.0
_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str
    key_id: str | None
    is_admin: bool


@dataclass(frozen=True)
class CreatedKey:
    id: str
    tenant: str
    name: str
    prefix: str
    is_admin: bool
    created_at: Any
    secret: str


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def mint_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


MAX_TENANT_NAME_LENGTH = 200


def tenant_name_to_store(name: str) -> str:
    """`name` trimmed, or InvalidRequest (param "tenant"): every way a tenant is named (the admin API, `keys
    create`, `import --tenant` or an export's headers) comes through here, so none makes one that the admin
    routes cannot address (an empty name, surrounding spaces) or refuse (too long, U+0000)."""
    trimmed = name.strip()
    if not trimmed:
        raise InvalidRequest("tenant must be a non-empty string", param="tenant")
    if len(trimmed) > MAX_TENANT_NAME_LENGTH or "\x00" in trimmed:
        raise InvalidRequest(
            f"tenant must be at most {MAX_TENANT_NAME_LENGTH} characters, without U+0000", param="tenant"
        )
    return trimmed


def _check_new_tenant_name(name: str) -> None:
    """What a new tenant's name may not hold: what the `/admin/tenants/{tenant}/…` paths cannot carry (a `/`, a
    name of dots) and control characters. A tenant named so before this check keeps its name, its keys and its
    place in an export."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise InvalidRequest("tenant cannot contain control characters", param="tenant")
    if "/" in name or name in {".", ".."}:
        raise InvalidRequest("tenant cannot contain '/' nor be '.' or '..'", param="tenant")


async def get_or_create_tenant(conn: AsyncConnection, name: str, *, restored: bool = False) -> str:
    """The tenant's id, created if new, under its checked name. `restored`: a tenant an export names, made again
    in another database as it was named there (the rules for a new tenant's name came after some)."""
    name = tenant_name_to_store(name)
    existing = await repository.tenant_id_named(conn, name)
    if existing is not None:
        return existing
    if not restored:
        _check_new_tenant_name(name)
    return await repository.get_or_create_tenant(conn, name)


MAX_KEY_NAME_LENGTH = 200  # as the admin API's body allows


async def create_key(engine: AsyncEngine, *, tenant: str, name: str = "", is_admin: bool = False) -> CreatedKey:
    tenant = tenant_name_to_store(tenant)  # as stored, for the answer
    if len(name) > MAX_KEY_NAME_LENGTH or "\x00" in name:  # `keys create --name` comes here without the API's check
        raise InvalidRequest(f"name must be at most {MAX_KEY_NAME_LENGTH} characters, without U+0000", param="name")
    secret = mint_secret()
    async with engine.begin() as conn:
        tenant_id = await get_or_create_tenant(conn, tenant)
        row = await repository.insert_key(
            conn,
            tenant_id=tenant_id,
            name=name,
            prefix=secret[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(secret),
            is_admin=is_admin,
        )
    return CreatedKey(
        id=row["id"],
        tenant=tenant,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        is_admin=is_admin,
        created_at=row["created_at"],
        secret=secret,
    )


def bearer_secret(authorization: str) -> str | None:
    """The key in an `Authorization: Bearer <key>` header's value, or None."""
    scheme, _, secret = authorization.partition(" ")
    return (secret.strip() or None) if scheme.lower() == "bearer" else None


class KeyAuthenticator:
    """Resolves bearer secrets to principals, caching hits briefly; a revoke in this process clears the cache
    at once, other processes see it within the cache TTL."""

    def __init__(self, engine: AsyncEngine, admin_api_key: str | None, *, max_lookups: int = 4) -> None:
        self._engine = engine
        self._admin_hash = hash_key(admin_api_key) if admin_api_key else None
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._misses: dict[bytes, float] = {}
        # Lookups that reach the database at once: a flood of random keys (each one new, so never cached) then
        # waits here instead of taking every pooled connection from the requests of valid keys.
        self._lookup_slots = asyncio.Semaphore(max_lookups)
        # One database lookup per key at a time: when a busy key's cache entry expires, every request in
        # flight misses at once, and each used to take a pooled connection to wait on the same api_key row
        # (the last_used_at update), starving the pool for a moment every _CACHE_TTL_SECONDS.
        self._lookups: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, secret: str) -> Principal | None:
        return await self.authenticate_digest(hash_key(secret))

    async def authenticate_digest(self, digest: bytes) -> Principal | None:
        """By the key's SHA-256 (what a console session holds instead of the secret)."""
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(tenant_id="", tenant_name="", key_id=None, is_admin=True)
        while True:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            missed_until = self._misses.get(digest)
            if missed_until is not None and missed_until > time.monotonic():
                return None
            running = self._lookups.get(digest)
            if running is None:
                return await self._look_up(digest)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # this request was cancelled
                # The lookup failed or its request was cancelled: its error is that request's to report; this
                # one looks again (another request may have started a lookup meanwhile).

    async def _look_up(self, digest: bytes) -> Principal | None:
        lookup: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[digest] = lookup
        try:
            async with self._lookup_slots:
                principal = await self._read_and_touch(digest)
        except BaseException:
            lookup.cancel()
            raise
        else:
            lookup.set_result(principal)
            return principal
        finally:
            del self._lookups[digest]

    async def _read_and_touch(self, digest: bytes) -> Principal | None:
        now = time.monotonic()
        async with self._engine.begin() as conn:
            row = await repository.find_active_key(conn, digest)
            if row is None or not hmac.compare_digest(bytes(row.key_hash), digest):
                self._cache.pop(digest, None)
                if len(self._misses) >= _CACHE_MAX_ENTRIES:
                    self._misses.clear()
                self._misses[digest] = now + _MISS_TTL_SECONDS
                return None
            await repository.touch_key(conn, row.id)
        principal = Principal(tenant_id=row.tenant_id, tenant_name=row.name, key_id=row.id, is_admin=row.is_admin)
        if len(self._cache) > _CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[digest] = (now + _CACHE_TTL_SECONDS, principal)
        return principal

    def forget_key(self, key_id: str) -> None:
        for digest, (_, principal) in list(self._cache.items()):
            if principal.key_id == key_id:
                del self._cache[digest]


async def revoke(engine: AsyncEngine, key_id: str) -> Any:
    async with engine.begin() as conn:
        return await repository.revoke_key(conn, key_id)


async def list_keys(engine: AsyncEngine, tenant: str | None = None) -> list[Any]:
    """Every key, or a tenant's (by name or id): a tenant that does not exist is an error, not an empty list."""
    async with engine.connect() as conn:
        found = await repository.list_keys(conn, tenant=tenant)
        if tenant is not None and not found and not await repository.tenant_exists(conn, tenant):
            raise InvalidRequest(f"No tenant with the name or id {tenant!r}", param="tenant", code="unknown_tenant")
    return found


async def count_keys(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await repository.count_keys(conn)
