"""The lifecycle of allocations, reservations and relay ports in one place (pion/turn's model).

:class:`AllocationManager` owns the :class:`~secureconnect.turn.allocation.AllocationTable`, the
:class:`~secureconnect.turn.allocation.RelayPortPool` and the I/O layer's
:class:`~secureconnect.turn.allocation.RelayBinder`: it binds relay sockets (with an EVEN-PORT
reservation when asked, RFC 8656 §7.2), and releases socket, port and quota slot together
whenever an allocation or a reservation ends (:class:`~secureconnect.turn.quotas.QuotaGate`:
the book, shared by every worker). :class:`~secureconnect.turn.core.TurnCore` decides *whether*
(authentication, quotas, the RFC's checks) and takes the slots; this decides nothing, it keeps
the books straight. Every allocation that ends is recorded once, as an
:class:`~secureconnect.turn.allocation.AllocationEnded` handed to ``ended`` (the core counts it
and passes it on to the I/O layer, which logs it).
Sans-IO like the core: times are the caller's ``now``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from secureconnect.stun import ErrorCode, StunError
from secureconnect.turn.allocation import (
    ENDED_REASONS,
    Allocation,
    AllocationEnded,
    AllocationTable,
    RelayBinder,
    RelayEndpoint,
    RelayPortPool,
    Reservation,
    quota_key,
    source_key,
)
from secureconnect.turn.quotas import QuotaGate


class AllocationManager:
    """Relay sockets and ports for allocations and reservations; see the module docstring."""

    __slots__ = ("binder", "ended", "ports", "quotas", "reservation_lifetime", "table")

    def __init__(
        self,
        *,
        reservation_lifetime: float,
        binder: RelayBinder,
        quotas: QuotaGate,
        ports: RelayPortPool | None = None,
        ended: Callable[[AllocationEnded], None] | None = None,
    ) -> None:
        self.binder = binder
        #: told of every allocation that ends, once, before its relay socket closes
        self.ended = ended
        self.quotas = quotas
        self.ports = ports or RelayPortPool()
        self.table = AllocationTable()
        self.reservation_lifetime = reservation_lifetime

    def bind_relay(
        self, family: int, *, even: bool, reserve: tuple[str, str] | None, now: float, df: bool
    ) -> tuple[RelayEndpoint, int, bytes]:
        """Bind a relay socket from the pool; with ``reserve`` (the user's and the client
        address's quota keys) also hold port+1 for a later Allocate with the returned
        RESERVATION-TOKEN (RFC 8656 §7.2, EVEN-PORT R bit). The caller has taken the quota
        slots (two with ``reserve``); the reservation keeps its own until it ends."""
        ports = self.ports
        binder = self.binder
        for port in ports.candidates(family, even=even or reserve is not None):
            if reserve is not None and port + 1 > ports.high:
                continue
            try:
                endpoint = binder.bind(family, port, df)
            except OSError:
                continue
            if reserve is None:
                ports.take(family, port)
                return endpoint, port, b""
            try:
                held = binder.bind(family, port + 1, df)
            except OSError:
                binder.close(endpoint)
                continue
            ports.take(family, port)
            ports.take(family, port + 1)
            token = secrets.token_bytes(8)
            expires = now + self.reservation_lifetime
            user, source = reserve
            self.table.reserve(token, Reservation(held, port + 1, expires, family, user, source))
            return endpoint, port, token
        # RFC 8656 §7.2: no port that satisfies the request: 508 (Insufficient Capacity).
        raise StunError(ErrorCode.INSUFFICIENT_CAPACITY)

    def release_reservation(self, reservation: Reservation) -> None:
        """A reservation ended (expired, or its token was found stale): socket, port and
        quota slot go."""
        self.binder.close(reservation.endpoint)
        self.ports.release(reservation.family, reservation.port)
        self.quotas.give(reservation.user, reservation.source, 1)

    def delete(self, allocation: Allocation, reason: str, now: float) -> AllocationEnded | None:
        """An allocation ended for ``reason`` (``allocation.ENDED_REASONS``): out of the
        table, its totals read (before its socket and the fast path's copy go), its socket
        closed, its port and quota slot free. The record, the first time only (None after)."""
        if reason not in ENDED_REASONS:  # the log's and the metrics' label values are these
            raise ValueError(f"unknown reason an allocation ended: {reason!r}")
        removed = self.table.remove(allocation)
        event = allocation.ended(now, reason) if removed else None
        self.binder.close(allocation.relay)
        self.ports.release(allocation.family, allocation.relayed[1])
        if event is not None:  # its slot is given back once, however often it is deleted
            client_ip = allocation.five_tuple[1][0]
            self.quotas.give(quota_key(allocation.username), source_key(client_ip), 1)
            if self.ended is not None:
                self.ended(event)
        return event

    def expire_reservations(self, now: float | None) -> None:
        """Release the reservations expired by ``now`` (every one when None)."""
        for reservation in self.table.take_expired_reservations(now):
            self.release_reservation(reservation)

    def take_slots(
        self, user: str, source: str, reserve: bool, reservation: Reservation | None
    ) -> bool:
        """Quota slots for a new allocation: one, or two with EVEN-PORT's R bit (the
        reservation holds a second socket). An Allocate with a RESERVATION-TOKEN takes over the
        reservation's slot, moved to whoever allocates with it (taken for the new holder before
        it is given back: at the total quota exactly, a token used by someone else gets 486)."""
        quotas = self.quotas
        if reservation is None:
            return quotas.take(user, source, 2 if reserve else 1)
        if (reservation.user, reservation.source) == (user, source):
            return True
        if not quotas.take(user, source, 1):
            return False
        quotas.give(reservation.user, reservation.source, 1)
        return True
