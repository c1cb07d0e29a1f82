"""The console's session cookie and CSRF tokens, signed with CONSOLE_SESSION_SECRET (HMAC-SHA256).

The cookie holds the SHA-256 of the credential that signed in (what the database stores, never the secret),
masked so that only the server can read it, when it expires and a random nonce; every page checks that this
credential is still an admin one, so a revoked key's sessions end at once. CSRF: each form carries an HMAC of the
session's nonce (a login form: of a random value in a short-lived cookie, double-submitted)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "convstore_console"
LOGIN_COOKIE = "convstore_console_login"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    key_digest: bytes
    expires_at: float
    nonce: str


class SessionSigner:
    def __init__(self, secret: str, hours: float) -> None:
        self._key = hashlib.sha256(b"convstore-console\x00" + secret.encode()).digest()
        self.lifetime = hours * 3600

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def _masked(self, digest: bytes, nonce: str) -> bytes:
        """The digest XORed with a keystream only the server can make (an HMAC of the session's nonce), both
        ways: a copy of the cookie (a proxy's log) must not hand out a fast, unsalted hash of an operator-chosen
        ADMIN_API_KEY to guess at offline. A digest of another length raises ValueError."""
        stream = hmac.new(self._key, f"digest:{nonce}".encode(), hashlib.sha256).digest()
        return bytes(a ^ b for a, b in zip(digest, stream, strict=True))

    def issue(self, key_digest: bytes) -> str:
        expires = int(time.time() + self.lifetime)
        nonce = secrets.token_urlsafe(16)
        payload = f"{_b64(self._masked(key_digest, nonce))}.{expires}.{nonce}"
        return f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 3:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        digest, expires, nonce = payload.split(".")
        try:
            session = Session(self._masked(_unb64(digest), nonce), float(expires), nonce)
        except ValueError:
            return None
        return session if session.expires_at > time.time() else None

    def csrf_token(self, nonce: str) -> str:
        return self._sign(f"csrf:{nonce}")

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        # As bytes: compare_digest refuses a str with a character past ASCII (a 500 for a forged cookie or form).
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce).encode(), (token or "").encode())
