"""HMAC-signed room tokens: what an application's backend mints so a browser may join a room.

Format (``docs/signaling-protocol.md``)::

    token   = "v1." + b64url(payload) + "." + b64url(HMAC-SHA256(secret, "v1." + b64url(payload)))
    payload = {"room": ROOM, "exp": UNIX_EXPIRY_SECONDS}

``room`` may be ``"*"`` for a token good for any room (e.g. for ``GET /ice`` only). Several
secrets may be configured, newest first, so they rotate like the TURN secrets. Verification never
raises on untrusted input and compares MACs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Final

PREFIX: Final = "v1."
ANY_ROOM: Final = "*"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


class RoomTokens:
    """Mints and checks room tokens with the configured secrets (newest first)."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(s for s in secrets if s)
        if not self._secrets:
            raise ValueError("room tokens need at least one non-empty secret")

    def replace_secrets(self, secrets: Iterable[str]) -> None:
        """Swap the secrets (SIGHUP); a bad list keeps the old one."""
        self._secrets = RoomTokens(secrets)._secrets

    def mint(self, room: str, ttl: int, now: float) -> str:
        """A token for ``room`` (or ``ANY_ROOM``) valid ``ttl`` seconds from ``now``."""
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        payload = json.dumps({"room": room, "exp": int(now) + ttl}, separators=(",", ":"))
        body = PREFIX + _b64(payload.encode())
        return body + "." + _mac(self._secrets[0], body)

    def check(self, token: str | None, room: str | None, now: float) -> bool:
        """Whether ``token`` is genuine, unexpired and good for ``room`` (None: any room)."""
        if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 2048:
            return False
        body, dot, mac = token.rpartition(".")
        genuine = bool(dot) and any(
            hmac.compare_digest(mac, _mac(secret, body)) for secret in self._secrets
        )
        payload = _payload(body) if genuine else None
        if payload is None:
            return False
        expiry, granted = payload.get("exp"), payload.get("room")
        if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry <= now:
            return False
        return isinstance(granted, str) and (room is None or granted in (ANY_ROOM, room))


def _payload(body: str) -> dict[str, object] | None:
    """The JSON object of a token whose MAC checked (still untrusted in shape)."""
    try:
        payload = json.loads(_unb64(body[len(PREFIX) :]))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None
