"""Dashboard login sessions: a signed, expiring, revocable cookie value.

The cookie is `<expires>.<nonce>.<mac>`: `mac` is HMAC-SHA256, under a server secret, of the
expiry and a random nonce, with the API token mixed into the key. So the cookie

- says nothing about the token and cannot be brute-forced offline (a digest of the token
  could: the old cookie was a fixed, unsalted SHA-256 of it);
- stops working at `expires` (PGTASKS_SESSION_TTL), when the token changes, and, with the
  default random secret, when the server restarts;
- stops working at logout: the nonce is revoked on the server (kept until it would have
  expired anyway), so a copy taken before the logout is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two header or cookie values. Compared as bytes: Starlette
    decodes headers as latin-1, so a non-ASCII value is a str that hmac.compare_digest
    refuses with TypeError (a 500); as bytes it is simply not equal."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Sessions:
    """Issues and checks the dashboard's session cookies for one token."""

    def __init__(
        self,
        token: str | None,
        *,
        secret: bytes | None = None,
        ttl: float = 12 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        key = secret if secret else secrets.token_bytes(32)
        self._key = (
            hmac.new(key, b"pgtasks-dashboard-session\0" + token.encode(), hashlib.sha256).digest()
            if token
            else None
        )
        #: Revoked nonces and when they would have expired (then they are dropped).
        self._revoked: dict[str, int] = {}

    def _mac(self, payload: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """A new session's cookie value."""
        payload = f"{int(self._clock() + self.ttl)}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._mac(payload)}"

    def _open(self, value: str) -> tuple[int, str] | None:
        """(expires, nonce) of a genuine, unexpired, unrevoked cookie value, else None."""
        if self._key is None:
            return None
        expires, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (expires.isdigit() and expires.isascii() and nonce and mac):
            return None
        if not same(mac, self._mac(f"{expires}.{nonce}")):
            return None
        if int(expires) <= self._clock() or nonce in self._revoked:
            return None
        return int(expires), nonce

    def valid(self, value: str) -> bool:
        return self._open(value) is not None

    def revoke(self, value: str) -> None:
        """End the session `value` names (a logout); a value that is not a live session is
        ignored, so nobody without one can grow the list."""
        opened = self._open(value)
        if opened is None:
            return
        now = self._clock()
        for nonce, expires in list(self._revoked.items()):
            if expires <= now:
                del self._revoked[nonce]
        self._revoked[opened[1]] = opened[0]
