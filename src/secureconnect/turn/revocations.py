"""Revoked TURN users: credentials minted before a revocation are refused (docs/admin.md).

A TURN REST credential (``<expiry>:<user>``, RFC 8489 §9.2 long-term credentials with a password
derived from a shared secret) cannot be recalled: anyone holding one can allocate until its
expiry. ``secureconnect revoke --user U`` records when U was revoked; from then on the
:class:`~secureconnect.turn.auth.Authenticator` answers 401 to every request of U whose
credential was minted before that moment, and the admin server ends U's allocations.

*Minted before* has to be read from the expiry alone, since the username carries nothing else:
a credential minted at time ``m`` expires at ``m + ttl`` with ``ttl <= max_ttl``
(``turn.credential_ttl``, which the server enforces as the furthest expiry it accepts). So a
credential whose expiry is at most ``revoked_at + max_ttl`` may have been minted before the
revocation and is refused; one minted after it with the full TTL is accepted. Credentials of a
shorter TTL minted shortly after the revocation are refused too, for at most ``max_ttl`` after
it: erring on the side of refusing is what a revocation is for. Signaling mints with
``signal.ice_ttl``; an application that wants its users back at once mints with ``max_ttl``.

A static user (``turn.users``) has one password from before any revocation: it stays refused
until the revocation is lifted. ``until`` (``--until T``) refuses every credential of the user,
new ones too, until ``T`` (a ban), for REST and static users alike.

Entries expire on their own once nothing they refuse can still be used (every REST credential
minted before has expired and the ban is over); static users' entries without ``until`` stay
until lifted. At most :data:`MAX_REVOCATIONS` entries, so the list (and the file that keeps it
across restarts) stays bounded. Sans-IO: times are the caller's Unix ``now``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

from secureconnect.credentials import parse_expiry
from secureconnect.turn.allocation import quota_key

MAX_REVOCATIONS: Final = 10_000
MAX_USER_CHARS: Final = 256  # a REST user part or a static username, as operators type them
#: clock skew between the minting application and this server that a REST expiry may carry
#: (``CredentialMinter.is_current`` allows as much)
SKEW: Final = 60.0


class RevocationError(ValueError):
    """A revocation that cannot be recorded, or a revocation file that cannot be read."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """``user`` was revoked at ``revoked_at``; every credential refused until ``until`` if set."""

    user: str
    revoked_at: float
    until: float | None = None

    def refuses(self, username: str, now: float, max_ttl: float) -> bool:
        """Whether a credential named ``username`` (of this user) is refused at ``now``."""
        if self.until is not None and now < self.until:
            return True
        expiry = parse_expiry(username)
        if expiry is None:  # a static user: its password predates the revocation
            return self.until is None
        # No skew allowance here: a credential minted a second after the revocation with the
        # full TTL is the new one the application hands out, and must work.
        return expiry <= self.revoked_at + max_ttl

    def lapsed(self, now: float, max_ttl: float, static: bool) -> bool:
        """Whether nothing this entry refuses can be used any more at ``now``."""
        if self.until is not None and now < self.until:
            return False
        if static:
            return self.until is not None
        return now > self.revoked_at + max_ttl + SKEW

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "revoked_at": self.revoked_at, "until": self.until}


def check_user(user: object) -> str:
    """``user`` if it can name a revoked user (RevocationError says why not)."""
    if not isinstance(user, str) or not user:
        raise RevocationError("the user must be a non-empty string")
    if len(user) > MAX_USER_CHARS:
        raise RevocationError(f"the user is longer than {MAX_USER_CHARS} characters")
    if not user.isprintable():
        raise RevocationError("the user has control characters")
    return user


def _time(value: object, what: str) -> float:
    try:  # an int too large for a float raises OverflowError in isfinite and float()
        if not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    except OverflowError:
        pass
    raise RevocationError(f"{what} must be a finite number of Unix seconds")


class Revocations:
    """The revoked users of one process, by user (a REST name's user part or a static name)."""

    __slots__ = ("entries",)

    def __init__(self, entries: dict[str, Revocation] | None = None) -> None:
        self.entries: dict[str, Revocation] = dict(entries or {})

    def __len__(self) -> int:
        return len(self.entries)

    def revoke(self, user: str, now: float, until: float | None = None) -> Revocation:
        """Revoke ``user`` as of ``now`` (a later revocation replaces an earlier one)."""
        check_user(user)
        if until is not None:
            until = _time(until, "until")
        if user not in self.entries and len(self.entries) >= MAX_REVOCATIONS:
            raise RevocationError(f"{MAX_REVOCATIONS} users are revoked already; lift some first")
        entry = self.entries[user] = Revocation(user, _time(now, "now"), until)
        return entry

    def lift(self, user: str) -> bool:
        """Forget ``user``'s revocation; whether there was one."""
        return self.entries.pop(user, None) is not None

    def refuses(self, username: str, now: float, max_ttl: float) -> bool:
        """Whether the credential ``username`` is refused at ``now`` (one dict lookup when its
        user is not revoked: this runs for every authenticated TURN request)."""
        if not self.entries:
            return False
        entry = self.entries.get(quota_key(username))
        return entry is not None and entry.refuses(username, now, max_ttl)

    def prune(self, now: float, max_ttl: float, static_users: frozenset[str]) -> int:
        """Drop the entries that refuse nothing any more; how many went."""
        lapsed = [
            user
            for user, entry in self.entries.items()
            if entry.lapsed(now, max_ttl, user in static_users)
        ]
        for user in lapsed:
            del self.entries[user]
        return len(lapsed)

    def replace(self, other: Revocations) -> None:
        """Take ``other``'s entries (a reload of the file), in one assignment."""
        self.entries = dict(other.entries)

    def to_json(self) -> str:
        return json.dumps(
            {"version": 1, "revocations": [e.to_json() for e in self.entries.values()]},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Revocations:
        """Parse what :meth:`to_json` wrote; RevocationError names what is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise RevocationError(f"not JSON: {str(exc)[:100]}") from None
        if not isinstance(data, dict) or data.get("version") != 1:
            raise RevocationError("not a version 1 revocation list")
        items = data.get("revocations")
        if not isinstance(items, list) or len(items) > MAX_REVOCATIONS:
            raise RevocationError(f"'revocations' must be a list of at most {MAX_REVOCATIONS}")
        entries: dict[str, Revocation] = {}
        for item in items:
            if not isinstance(item, dict):
                raise RevocationError("each revocation must be an object")
            user = check_user(item.get("user"))
            until = item.get("until")
            entries[user] = Revocation(
                user,
                _time(item.get("revoked_at"), "revoked_at"),
                None if until is None else _time(until, "until"),
            )
        return cls(entries)
