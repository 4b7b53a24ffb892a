"""The allocation quotas' books: relay sockets held per user, per client address and in total.

An allocation and a reservation (EVEN-PORT with R, RFC 8656 §7.2) each hold a relay socket, so
each counts as one slot until it ends. :class:`QuotaBook` keeps the counts and checks the three
limits (``turn.user_quota``, ``turn.ip_quota``, ``turn.total_quota``) in one step, so a slot is
either taken whole or not at all.

Several TURN workers (``turn.workers``, docs/workers.md) share one book, kept by the parent
process: a user with quota 10 gets 10 allocations in all, not 10 per worker. The book therefore
counts what each *owner* holds (the parent's own TCP/TLS clients are owner 0, each worker
process an owner of its own, a fresh one each time it starts), so that a worker that dies gives
back every slot it held at once (:meth:`QuotaBook.drop_owner`): its relay sockets died with it.

The core reaches the book through :class:`QuotaGate` (``take``/``give``): in one process the book
itself (owner 0), in a worker a client of the parent's book (:mod:`secureconnect.turn.workerlink`).
Sans-IO: no locks here; whoever shares a book across threads holds a lock around it.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

__all__ = ["QuotaBook", "QuotaGate", "Quotas"]


class Quotas(Protocol):
    """The three limits (``TurnSettings`` has them)."""

    @property
    def total_quota(self) -> int: ...
    @property
    def user_quota(self) -> int: ...
    @property
    def ip_quota(self) -> int: ...


class QuotaGate(Protocol):
    """What the core asks before it binds a relay socket and tells after one is closed."""

    def take(self, user: str, source: str, needed: int) -> bool:
        """Hold ``needed`` slots for ``user`` (``quota_key``) from ``source`` (``source_key``),
        or nothing (False) when any of the three limits would be passed."""
        ...

    def give(self, user: str, source: str, count: int) -> None:
        """Give back ``count`` slots taken for ``user`` from ``source``."""
        ...


class QuotaBook:
    """Slots held per user, per client address, in total, and by owner; see the module
    docstring. Also a :class:`QuotaGate` for owner 0 (the one-process case)."""

    __slots__ = ("_closed", "_owned", "by_source", "by_user", "held", "limits")

    def __init__(self, limits: Quotas) -> None:
        self.limits = limits
        self.by_user: dict[str, int] = {}
        self.by_source: dict[str, int] = {}
        self.held = 0  # what the total quota bounds
        #: owner -> (user, source) -> slots: what to give back when an owner dies
        self._owned: dict[int, Counter[tuple[str, str]]] = {}
        #: owners dropped for good (a worker process is a new owner each time it starts): a
        #: request of theirs that arrives late is refused, so no slot outlives its socket
        self._closed: set[int] = set()

    def take(self, user: str, source: str, needed: int, owner: int = 0) -> bool:
        """Hold ``needed`` slots, all or none. "The server MAY ... reject with 486 (Allocation
        Quota Reached)" (RFC 8656 §7.2) is the caller's answer to False. The per-address limit
        matters as much as the per-user one: in open mode anyone can mint credentials for any
        user name, so the per-user quota alone bounds nothing."""
        limits = self.limits
        if owner in self._closed:
            return False
        if (
            needed <= 0
            or self.held + needed > limits.total_quota
            or self.by_user.get(user, 0) + needed > limits.user_quota
            or self.by_source.get(source, 0) + needed > limits.ip_quota
        ):
            return needed == 0
        self._count(user, source, needed)
        self._owned.setdefault(owner, Counter())[(user, source)] += needed
        return True

    def give(self, user: str, source: str, count: int, owner: int = 0) -> None:
        """Give back slots; never more than ``owner`` holds for that key (a stray or repeated
        give from a worker cannot drive a count below what others hold)."""
        owned = self._owned.get(owner)
        if owned is None:
            return
        key = (user, source)
        count = min(count, owned.get(key, 0))
        if count <= 0:
            return
        owned[key] -= count
        if owned[key] == 0:
            del owned[key]
        self._count(user, source, -count)

    def drop_owner(self, owner: int) -> int:
        """Give back everything ``owner`` holds (a worker died with its relay sockets);
        returns how many slots that was. The owner is closed: later takes of its are refused."""
        self._closed.add(owner)
        owned = self._owned.pop(owner, Counter())
        for (user, source), count in owned.items():
            self._count(user, source, -count)
        return sum(owned.values())

    def owned(self, owner: int) -> int:
        """How many slots ``owner`` holds."""
        return sum(self._owned.get(owner, Counter()).values())

    def _count(self, user: str, source: str, delta: int) -> None:
        self.held += delta
        for counts, key in ((self.by_user, user), (self.by_source, source)):
            value = counts.get(key, 0) + delta
            if value > 0:
                counts[key] = value
            else:
                counts.pop(key, None)
