"""Connection caps, in total and per client address, and the refusals they cause, counted by
reason: the one implementation every component's admission control uses (issue #13, item 1).

A connection costs descriptors and memory from accept on, so every listener bounds how many it
holds, and how many one client address may hold, so that one host cannot take every slot.
:class:`ConnectionCaps` is one such pair of bounds with its counts; :class:`Ticket` is what one
admitted connection holds: a slot of each cap it was admitted under, each given back exactly once
(closing the ticket gives back what is left, however the connection ended), and the deadline by
which its handshake must be done.

Who uses it: :class:`~secureconnect.transport.listeners.StreamAcceptor` (STUN and TURN over TCP
and TLS: one cap per transport, in total and per address) and signaling's admission control
(:mod:`secureconnect.signal.serve_admission`: open connections in total; unfinished handshakes in
total and per address, trusted proxies held to the total only; WebSockets per client address).

Sans-IO: no sockets, no clock (callers pass the deadline), no trio.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(eq=False, slots=True)
class ConnectionCaps:
    """Slots held in total and per client address, against a cap on each (None: no cap), and
    the refusals they caused, by reason (``refused``; may be shared between caps whose refusals
    are reported together)."""

    max_total: int | None
    max_per_address: int | None = None
    #: the reasons counted in ``refused`` when a cap is reached (also the metrics' labels)
    total_reason: str = field(default="total", kw_only=True)
    per_address_reason: str = field(default="per-address", kw_only=True)
    #: addresses held to the total cap only (trusted proxies: their clients share the address)
    exempt: tuple[Network, ...] = field(default=(), kw_only=True)
    refused: dict[str, int] = field(default_factory=dict, kw_only=True)
    held: int = field(default=0, init=False)
    _per_address: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.max_total is not None:
            self.refused.setdefault(self.total_reason, 0)
        if self.max_per_address is not None:
            self.refused.setdefault(self.per_address_reason, 0)

    def held_by(self, address: str) -> int:
        """Slots ``address`` holds."""
        return self._per_address.get(address, 0)

    def refusal(self, address: str) -> str | None:
        """Which cap one more slot for ``address`` would exceed (its reason), or None."""
        if self.max_total is not None and self.held >= self.max_total:
            return self.total_reason
        if (
            self.max_per_address is not None
            and self.held_by(address) >= self.max_per_address
            and not self._exempt(address)
        ):
            return self.per_address_reason
        return None

    def _exempt(self, address: str) -> bool:
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.exempt)

    def _take(self, address: str) -> None:
        self.held += 1
        self._per_address[address] = self.held_by(address) + 1

    def _give_back(self, address: str) -> None:
        self.held -= 1
        left = self._per_address.pop(address) - 1
        if left:
            self._per_address[address] = left


class Ticket:
    """What one admitted connection holds: slots of :class:`ConnectionCaps`, each given back
    exactly once, and ``deadline`` (the caller's clock) for its handshake."""

    __slots__ = ("_closed", "_held", "deadline")

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self._held: list[tuple[ConnectionCaps, str]] = []
        self._closed = False

    def take(self, address: str, *caps: ConnectionCaps) -> bool:
        """A slot of every one of ``caps`` for ``address``, or (False) none: the first cap that
        would be exceeded counts the refusal under its reason. A closed ticket takes nothing
        (False, not counted): its connection has ended, and nothing would give the slot back."""
        if self._closed:
            return False
        for cap in caps:
            reason = cap.refusal(address)
            if reason is not None:
                cap.refused[reason] = cap.refused.get(reason, 0) + 1
                return False
        for cap in caps:
            cap._take(address)
            self._held.append((cap, address))
        return True

    def give_back(self, caps: ConnectionCaps) -> None:
        """Give back the slot of ``caps``, if this ticket still holds one."""
        for n, (cap, address) in enumerate(self._held):
            if cap is caps:
                del self._held[n]
                cap._give_back(address)
                return

    def close(self) -> None:
        """Give back every slot still held (idempotent); the ticket takes no more."""
        self._closed = True
        held, self._held = self._held, []
        for cap, address in held:
            cap._give_back(address)
