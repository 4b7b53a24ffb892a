"""The revocation list kept across restarts: ``revocations.json`` in the state directory.

The list itself (:class:`~secureconnect.turn.revocations.Revocations`) is the object the TURN
authenticator reads; this wraps it with the file. A revocation is written (atomically, mode
0600) before it takes effect anywhere, so a revocation the operator was told about survives a
restart; when the file cannot be written the revocation is refused with the reason, never kept
in memory only. TURN worker processes re-read the file when told (docs/workers.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from secureconnect.logs import fields
from secureconnect.statedir import ensure_dir, write_private
from secureconnect.turn.revocations import Revocation, RevocationError, Revocations

log = logging.getLogger("secureconnect.admin")

FILE_NAME: Final = "revocations.json"


def load_revocations(path: Path) -> Revocations:
    """The list in ``path`` (empty when there is none); RevocationError when it is unreadable
    or damaged (the process must not start as if nobody were revoked)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Revocations()
    except (OSError, UnicodeDecodeError) as exc:
        raise RevocationError(f"{path}: {exc}") from None
    try:
        return Revocations.from_json(text)
    except RevocationError as exc:
        raise RevocationError(f"{path}: {exc}") from None


class RevocationStore:
    """``revocations`` and the file that keeps them (see the module docstring)."""

    def __init__(
        self, path: Path, revocations: Revocations, *, max_ttl: float, static_users: Iterable[str]
    ) -> None:
        self.path = path
        self.revocations = revocations
        self.max_ttl = max_ttl
        self.static_users = frozenset(static_users)

    def revoke(self, user: str, now: float, until: float | None) -> Revocation:
        """Record ``user``'s revocation in the file, then in the live list."""
        updated = Revocations(self.revocations.entries)
        entry = updated.revoke(user, now, until)
        updated.prune(now, self.max_ttl, self.static_users)
        updated.entries[user] = entry  # kept even if it refuses nothing (seen in the list)
        self._write(updated)
        self.revocations.replace(updated)
        log.info("revoked", extra=fields(user=user, until=until))
        return entry

    def lift(self, user: str, now: float) -> bool:
        """Forget ``user``'s revocation (file first); whether there was one."""
        updated = Revocations(self.revocations.entries)
        lifted = updated.lift(user)
        updated.prune(now, self.max_ttl, self.static_users)
        self._write(updated)
        self.revocations.replace(updated)
        if lifted:
            log.info("revocation-lifted", extra=fields(user=user))
        return lifted

    def _write(self, revocations: Revocations) -> None:
        try:
            ensure_dir(self.path.parent)
            write_private(self.path, revocations.to_json().encode())
        except OSError as exc:
            why = f"cannot keep the revocation list in {self.path}: {exc}"
            raise RevocationError(why) from None
