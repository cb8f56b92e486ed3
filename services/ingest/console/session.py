"""Console sessions and their CSRF tokens, as pure functions of the admin key and ``now``.

A session is a signed cookie (itsdangerous, HMAC-SHA256) holding a random session id and its expiry; nothing is
kept on the server. The signing key is derived from the admin key, so rotating ``WARP_ADMIN_KEY`` ends every
session at once. A form's CSRF token is an HMAC of the session id under another key derived from it: a page of
this session can send it, another site cannot read it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "warp_console"
_SALT = "warp-console-session-v1"


@dataclass(frozen=True)
class Session:
    id: str
    expires: datetime

    @property
    def moderator(self) -> str:
        """How events and the audit log name this session (the id alone cannot be turned into a cookie)."""
        return f"console-{self.id[:16]}"


class SessionKeys:
    """Everything signed or checked under one admin key."""

    def __init__(self, admin_key: str) -> None:
        self._admin_key = admin_key.encode()
        self._cookies = URLSafeSerializer(self._derived(b"cookie"), salt=_SALT)
        self._csrf_key = self._derived(b"csrf")

    def _derived(self, purpose: bytes) -> bytes:
        return hmac.new(self._admin_key, b"warp-console/" + purpose, hashlib.sha256).digest()

    def admits(self, key: str) -> bool:
        return hmac.compare_digest(key.encode(), self._admin_key)

    def issue(self, expires: datetime) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_hex(16), expires)
        return session, self._cookies.dumps({"sid": session.id, "exp": expires.timestamp()})

    def session(self, cookie: str | None, now: datetime) -> Session | None:
        """The session a cookie carries; None when absent, forged, signed under another key, or expired."""
        if not cookie:
            return None
        try:
            payload = self._cookies.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str):
            return None
        expires = payload.get("exp")
        if not isinstance(expires, int | float) or expires <= now.timestamp():
            return None
        return Session(payload["sid"], datetime.fromtimestamp(expires, now.tzinfo))

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf_token(session).encode())
