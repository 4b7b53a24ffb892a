"""TURN REST API ephemeral credentials, static users, and stateless nonces.

Shared by the TURN server (which checks credentials) and signaling (which hands them to browsers),
so this module imports nothing of ours and does no I/O; time is always a parameter.

TURN REST API credentials
-------------------------
The de-facto standard (draft-uberti-behave-turn-rest, implemented by coturn and most TURN servers
since) lets an application server mint TURN credentials that the TURN server can verify without a
user database, because both know a shared secret:

- ``username = "<expiry>:<user id>"`` or just ``"<expiry>"``, where ``<expiry>`` is the Unix time in
  *seconds* at which the credential stops being accepted (an expiry, not an issue time);
- ``password = base64(HMAC-SHA1(secret, username))``.

The TURN server reads the expiry back from the username (`parse_expiry`), computes the password
for each secret it holds (`CredentialMinter.passwords_for`) and derives the long-term key
MD5(username ":" realm ":" password) (RFC 8489 §9.2.2) for each candidate.

Rotation: a `CredentialMinter` holds several secrets, newest first. `mint` always uses the newest;
`passwords_for` offers one candidate per secret, so a credential minted before a rotation keeps
working while its secret stays in the list, and stops the moment the secret is removed.
`replace_secrets` swaps the whole tuple in one assignment, so a reload never exposes a half-updated
list. The minter is an explicit object passed to the components that need it, never a module
global, so tests and workers each hold their own.

Expiry policy: `CredentialMinter.is_current` accepts a REST username while ``now < expiry`` and
the expiry is no further ahead than ``max_ttl`` (plus a minute of clock skew). The second bound
catches the common minting mistake of milliseconds instead of seconds, which would otherwise
yield a credential valid for fifty thousand years. The TURN component checks currency when an
allocation is created, like coturn and LiveKit: an allocation that exists may keep refreshing past
the expiry, since tearing down a live call because a page fetched its credentials long ago helps
nobody; ``turn.strict_expiry`` checks it on every request and ends sessions at expiry
(docs/security.md says why that is not the default).

Static users
------------
`StaticUsers` is a small frozen mapping of fixed usernames to passwords, for labs and for clients
that cannot fetch credentials. A static username must not look like a REST username (digits before
the first ``:``), so it is never ambiguous which check applies.

Stateless nonces
----------------
RFC 8489 §9.2 lets a server choose its NONCE freely; a server that keeps nothing per client before
authentication cannot be exhausted by unauthenticated traffic. `NonceMint.issue` returns
``base64url(timestamp_ms[6] || HMAC-SHA256(key, features || timestamp_ms || client_ip)[:12])``,
24 ASCII characters that encode no secret, and `NonceMint.check` recomputes the MAC: a nonce that is
malformed, forged, issued to another client address, older than ``lifetime`` or too far in the
future is rejected, which the server answers with 438 Stale Nonce (RFC 8489 §9.2.4). The key
derives from the newest TURN shared secret (`NonceMint.shared`), so every node and process
started with that secret accepts the others' nonces (a client moved by 300 Try Alternate keeps its
nonce, docs/cluster.md); `NonceMint.random` is a key of one process's own. Workers that share a
listening port must share the key.

With ``features != 0`` the nonce starts with RFC 8489 §9.2's nonce cookie: ``"obMatJos2"`` followed
by the 24-bit Security Feature Set in 4 base64 characters, then the MAC'd body. The feature bits are
covered by the MAC, so a man in the middle cannot strip them without the nonce failing `check`
(the bid-down protection of RFC 8489 §9.2). The bit *names* of the §18.1 registry are read
differently by implementations (the RFC's errata discuss the numbering), so this module takes the
raw 24-bit value and leaves naming the bits to the STUN/TURN layer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets as _secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "NONCE_COOKIE",
    "CredentialMinter",
    "NonceMint",
    "RestCredential",
    "StaticUsers",
    "parse_expiry",
    "rest_password",
]

#: A common TTL for credentials handed to a page (coturn's examples and most SDKs use a day).
DEFAULT_TTL: Final = 86_400

#: The longest TTL `CredentialMinter.mint` accepts by default: a week. Longer-lived credentials are
#: static passwords in disguise; pages must re-fetch credentials and restart ICE instead.
MAX_TTL: Final = 7 * 86_400

#: RFC 8489 §14.3: USERNAME "MUST contain a UTF-8-encoded sequence of fewer than 509 bytes".
_MAX_MINTED_USERNAME_BYTES: Final = 508

#: Untrusted usernames longer than this many characters are not REST form (RFC 5389 §15.3 allowed
#: fewer than 513 bytes, and a character is at least one byte).
_MAX_UNTRUSTED_USERNAME_CHARS: Final = 513

#: 11 digits reach the year 5138; more is a millisecond timestamp or junk.
_MAX_EXPIRY_DIGITS: Final = 11

#: Slack for `CredentialMinter.is_current`'s "not too far in the future" bound.
_EXPIRY_SKEW: Final = 60


def rest_password(secret: str, username: str) -> str:
    """The TURN REST API password for ``username``: base64(HMAC-SHA1(secret, username)).

    Never raises for any ``str`` (a lone surrogate cannot come off the wire, but is hashed as
    surrogatepass bytes rather than crashing the caller).
    """
    mac = hmac.new(
        secret.encode("utf-8"), username.encode("utf-8", "surrogatepass"), hashlib.sha1
    ).digest()
    return base64.b64encode(mac).decode("ascii")


def parse_expiry(username: str) -> int | None:
    """The expiry (Unix seconds) of a REST API username, or None if it is not in REST form.

    REST form is 1 to 11 ASCII digits, then the end of the string or ``:`` and anything. Usernames
    come from the network, so this never raises, whatever it is given.
    """
    if not isinstance(username, str) or len(username) > _MAX_UNTRUSTED_USERNAME_CHARS:
        return None
    head = username.partition(":")[0]
    # str.isdigit alone accepts "²" and Arabic-Indic digits; int() would reject or reinterpret them.
    if not (0 < len(head) <= _MAX_EXPIRY_DIGITS and head.isascii() and head.isdigit()):
        return None
    return int(head)


def _uri_list(uris: Iterable[str]) -> list[str]:
    if isinstance(uris, str):
        raise TypeError("uris must be a list of URIs, not one string")
    return list(uris)


@dataclass(frozen=True, slots=True)
class RestCredential:
    """One minted credential. ``expires`` is Unix seconds; ``ttl`` the lifetime asked for.

    The password is left out of ``repr`` so that logging a credential does not leak it.
    """

    username: str
    password: str = field(repr=False)
    ttl: int
    expires: int

    def to_json(self, uris: Iterable[str]) -> dict[str, object]:
        """The TURN REST API response body: {"username", "password", "ttl", "uris"}."""
        return {
            "username": self.username,
            "password": self.password,
            "ttl": self.ttl,
            "uris": _uri_list(uris),
        }

    def to_ice_server(self, uris: Iterable[str]) -> dict[str, object]:
        """A browser RTCIceServer: {"urls", "username", "credential"}."""
        return {"urls": _uri_list(uris), "username": self.username, "credential": self.password}


def _check_secrets(secrets: Iterable[str]) -> tuple[str, ...]:
    if isinstance(secrets, str):
        raise TypeError("secrets must be a list of strings, not one string")
    unique: dict[str, None] = {}
    for index, secret in enumerate(secrets):
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"secret #{index} is empty or not a string")
        unique.setdefault(secret)
    if not unique:
        raise ValueError("at least one shared secret is needed to mint TURN credentials")
    return tuple(unique)


def _check_user_text(text: str, what: str) -> None:
    """Usernames must be printable UTF-8 that fits STUN's USERNAME attribute."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} is empty or not a string")
    if not text.isprintable():
        raise ValueError(f"{what} {text!r} contains control or unprintable characters")
    # Lone surrogates are unprintable (category Cs), so the text is valid UTF-8 from here on.
    size = len(text.encode("utf-8"))
    if size > _MAX_MINTED_USERNAME_BYTES:
        raise ValueError(f"{what} is {size} bytes; STUN usernames are fewer than 509 bytes")


class CredentialMinter:
    """Mints and checks TURN REST API credentials from a rotating list of shared secrets.

    One instance is built from configuration and passed explicitly to the TURN server and to
    signaling; `replace_secrets` on reload updates both at once.
    """

    __slots__ = ("_max_ttl", "_secrets")

    def __init__(self, secrets: Iterable[str], *, max_ttl: int = MAX_TTL) -> None:
        if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or max_ttl <= 0:
            raise ValueError(f"max_ttl must be a positive number of seconds, got {max_ttl!r}")
        self._max_ttl = max_ttl
        self._secrets = _check_secrets(secrets)

    def __repr__(self) -> str:
        return f"CredentialMinter(<{len(self._secrets)} secrets>, max_ttl={self._max_ttl})"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The shared secrets, newest first."""
        return self._secrets

    @property
    def max_ttl(self) -> int:
        """The longest TTL `mint` accepts, in seconds."""
        return self._max_ttl

    def replace_secrets(self, secrets: Iterable[str]) -> None:
        """Swap in a new secret list (newest first) in one assignment; validated first, so a bad
        reload leaves the old list in place."""
        self._secrets = _check_secrets(secrets)

    def mint(self, user: str | None, ttl: int, now: float) -> RestCredential:
        """A credential for ``user`` (None: a bare ``"<expiry>"`` username) valid for ``ttl``
        seconds from ``now`` (Unix seconds), signed with the newest secret.

        Raises ValueError for a TTL outside ``1..max_ttl``, a non-finite or negative ``now``, or
        a user id that is empty, contains ``:`` (the REST separator; one ``:`` per username keeps
        every implementation's parser in agreement) or control characters, or is too long.
        """
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise TypeError(f"ttl must be an int number of seconds, got {ttl!r}")
        if not 0 < ttl <= self._max_ttl:
            raise ValueError(f"ttl must be between 1 and {self._max_ttl} seconds, got {ttl}")
        if not (math.isfinite(now) and now >= 0):
            raise ValueError(f"now must be a finite, non-negative Unix time, got {now!r}")
        expires = int(now) + ttl
        if user is None:
            username = str(expires)
        else:
            if not isinstance(user, str):
                raise TypeError(f"user id must be a string or None, got {user!r}")
            if ":" in user:
                raise ValueError(f"user id {user!r} must not contain ':', the REST separator")
            _check_user_text(user, "user id")
            username = f"{expires}:{user}"
            _check_user_text(username, "username")
        return RestCredential(username, rest_password(self._secrets[0], username), ttl, expires)

    def passwords_for(self, username: str) -> tuple[str, ...]:
        """One candidate password per secret, newest first, for the TURN server to try.

        Never raises on untrusted input; it does not check the expiry (see `is_current`).
        """
        current = self._secrets  # one read: a concurrent reload cannot mix two lists
        return tuple(rest_password(secret, username) for secret in current)

    parse_expiry = staticmethod(parse_expiry)

    def is_current(self, username: str, now: float) -> bool:
        """True for a REST username whose expiry is after ``now`` and at most ``max_ttl`` (plus a
        minute of skew) ahead of it; False for anything else. Never raises."""
        expires = parse_expiry(username)
        if expires is None or not math.isfinite(now):
            return False
        return now < expires <= now + self._max_ttl + _EXPIRY_SKEW


class StaticUsers(Mapping[str, str]):
    """A frozen username → password mapping for fixed accounts (labs, devices without a backend).

    ``repr`` shows the usernames only. Construction raises ValueError for an empty, unprintable or
    over-long username, or one in REST form (which `parse_expiry` would claim).
    """

    __slots__ = ("_users",)

    def __init__(self, users: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = users.items() if isinstance(users, Mapping) else users
        table: dict[str, str] = {}
        for name, password in pairs:
            _check_user_text(name, "static username")
            if parse_expiry(name) is not None:
                raise ValueError(
                    f"static username {name!r} looks like a TURN REST API username "
                    "(digits before ':'); choose a name that does not start with digits"
                )
            if not isinstance(password, str) or not password:
                raise ValueError(f"static user {name!r} has an empty password")
            if name in table:
                raise ValueError(f"static user {name!r} is listed twice")
            table[name] = password
        self._users: Mapping[str, str] = table

    def __getitem__(self, name: str) -> str:
        return self._users[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"StaticUsers({sorted(self._users)!r})"

    def password_for(self, username: str) -> str | None:
        """The password of ``username``, or None; never raises on untrusted input."""
        if not isinstance(username, str):
            return None
        return self._users.get(username)


#: RFC 8489 §9.2: the prefix announcing a Security Feature Set in a NONCE.
NONCE_COOKIE: Final = "obMatJos2"

_NONCE_DOMAIN: Final = b"secureconnect nonce v1\x00"
_TS_BYTES: Final = 6  # milliseconds since 1970 fit 48 bits until the year 10889
_MAC_BYTES: Final = 12  # 96 bits: forging needs ~2**95 online guesses
# base64url of 6 + 12 = 18 bytes is 24 characters with no padding and no unused bits, so every
# nonce has exactly one spelling.
_BODY: Final = re.compile(r"[A-Za-z0-9_-]{24}", re.ASCII)
_FEATURES: Final = re.compile(r"[A-Za-z0-9+/]{4}", re.ASCII)
_MAX_NONCE_CHARS: Final = 127  # RFC 8489 §14.10: fewer than 128 characters
_MIN_KEY_BYTES: Final = 16


class NonceMint:
    """Issues and checks stateless NONCEs bound to a client address (see the module docstring).

    ``lifetime`` is how long a nonce stays valid, ``skew`` how far in the future a timestamp may
    be (workers sharing a key may read slightly different clocks). ``repr`` hides the key.
    """

    __slots__ = ("_key", "_lifetime_ms", "_skew_ms")

    def __init__(self, key: bytes, lifetime: float = 600.0, *, skew: float = 2.0) -> None:
        if not isinstance(key, bytes) or len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"nonce key must be at least {_MIN_KEY_BYTES} random bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError(f"nonce lifetime must be positive seconds, got {lifetime!r}")
        if not (math.isfinite(skew) and skew >= 0):
            raise ValueError(f"nonce skew must be non-negative seconds, got {skew!r}")
        self._key = key
        self._lifetime_ms = lifetime * 1000.0
        self._skew_ms = skew * 1000.0

    @classmethod
    def random(cls, lifetime: float = 600.0, *, skew: float = 2.0) -> NonceMint:
        """A mint with a fresh 256-bit key: nonces from earlier processes become stale."""
        return cls(_secrets.token_bytes(32), lifetime, skew=skew)

    @classmethod
    def shared(cls, secret: str, lifetime: float = 600.0, *, skew: float = 2.0) -> NonceMint:
        """A mint whose key derives from the TURN shared ``secret``: every node started with the
        same newest secret accepts the others' nonces, so a client sent to another node by 300
        Try Alternate goes on with the nonce it has (libwebrtc does; docs/cluster.md)."""
        key = hmac.new(secret.encode("utf-8"), b"secureconnect nonce key v1", hashlib.sha256)
        return cls(key.digest(), lifetime, skew=skew)

    def __repr__(self) -> str:
        return f"NonceMint(lifetime={self._lifetime_ms / 1000.0}, skew={self._skew_ms / 1000.0})"

    @property
    def lifetime(self) -> float:
        """Seconds a nonce stays valid."""
        return self._lifetime_ms / 1000.0

    def _mac(self, features: int, stamp: bytes, client_ip: str) -> bytes:
        message = b"".join(
            (
                _NONCE_DOMAIN,
                features.to_bytes(3, "big"),
                stamp,
                client_ip.encode("utf-8", "surrogatepass"),
            )
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, now: float, client_ip: str, features: int = 0) -> str:
        """A nonce for ``client_ip`` at ``now`` (Unix seconds); with ``features`` (a 24-bit Security
        Feature Set, RFC 8489 §9.2) it starts with the ``obMatJos2`` nonce cookie."""
        if not (math.isfinite(now) and 0 <= now < 2 ** (8 * _TS_BYTES) / 1000):
            raise ValueError(f"now must be a Unix time in seconds, got {now!r}")
        if isinstance(features, bool) or not 0 <= features < 1 << 24:
            raise ValueError(f"features must be a 24-bit value, got {features!r}")
        stamp = int(now * 1000).to_bytes(_TS_BYTES, "big")
        body = base64.urlsafe_b64encode(stamp + self._mac(features, stamp, client_ip)).decode()
        if not features:
            return body
        cookie = base64.b64encode(features.to_bytes(3, "big")).decode()
        return NONCE_COOKIE + cookie + body

    def check(self, nonce: str, now: float, client_ip: str) -> bool:
        """True when ``nonce`` was issued by this key to ``client_ip`` and is still fresh at
        ``now``. Never raises: the nonce is untrusted input."""
        if not isinstance(client_ip, str) or not math.isfinite(now):
            return False
        parts = _split_nonce_untrusted(nonce)
        if parts is None:
            return False
        features, body = parts
        raw = base64.urlsafe_b64decode(body)
        stamp, mac = raw[:_TS_BYTES], raw[_TS_BYTES:]
        # RFC 8489 §9.2.4: a NONCE the server no longer considers valid gets 438 (Stale Nonce).
        if not hmac.compare_digest(mac, self._mac(features, stamp, client_ip)):
            return False
        age_ms = now * 1000.0 - int.from_bytes(stamp, "big")
        return -self._skew_ms <= age_ms <= self._lifetime_ms


def nonce_features(nonce: str) -> int:
    """The Security Feature Set a nonce's ``obMatJos2`` cookie carries (0 without one, or when
    malformed). Trust it only for a nonce ``NonceMint.check`` accepted: the MAC covers it."""
    parts = _split_nonce_untrusted(nonce)
    return parts[0] if parts is not None else 0


def _split_nonce_untrusted(nonce: object) -> tuple[int, str] | None:
    """(features, base64url body) of a well-formed nonce, or None."""
    if not isinstance(nonce, str) or len(nonce) > _MAX_NONCE_CHARS:
        return None
    features = 0
    if nonce.startswith(NONCE_COOKIE):
        cookie = nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4]
        if not _FEATURES.fullmatch(cookie):
            return None
        features = int.from_bytes(base64.b64decode(cookie, validate=True), "big")
        if not features:
            # issue() never writes an all-zero cookie: one nonce, one spelling.
            return None
        nonce = nonce[len(NONCE_COOKIE) + 4 :]
    if not _BODY.fullmatch(nonce):
        return None
    return features, nonce
