"""The TURN domain model: allocations, permissions, channel bindings, relay ports.

Theory of operation
-------------------
An :class:`Allocation` belongs to one client 5-tuple (RFC 8656 §2.2: transport, client address,
server address) and owns one relay endpoint (a UDP socket the I/O layer bound). It holds:

* ``permissions``: peer IP -> expiry time. RFC 8656 §9: permissions are keyed by IP address only,
  the port is ignored.
* ``channels``: channel number -> :class:`Channel`, and ``channel_by_peer``: peer (ip, port) ->
  the same :class:`Channel`. RFC 8656 §12: a binding is one-to-one in both directions.

All times are the caller's ``now`` (seconds, any monotonic origin): nothing here reads a clock,
so tests drive expiry with explicit numbers. :class:`AllocationTable` indexes allocations by
5-tuple and, for the UDP fast path, by (local address -> client address), so the receive loop of a
listening socket finds an allocation with one dict lookup on the address ``recvfrom`` returned.

:class:`RelayPortPool` chooses relay port numbers in the configured range and remembers which it
handed out; binding a socket to one is the I/O layer's job (:class:`RelayBinder`), so a port that
another process holds is skipped and the next candidate tried.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

Address = tuple[str, int]
#: RFC 8656 §2.2: (transport, client address, server address); transport is "udp", "tcp" or
#: "tls", and for TCP/TLS the pair of addresses names the connection.
FiveTuple = tuple[str, Address, Address]

#: RFC 8656 §12: channel numbers 0x4000 through 0x4FFF are the valid range.
CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF
#: RFC 5766 §11 allowed 0x4000 through 0x7FFF; some clients (coturn's turnutils_uclient) still
#: pick numbers up there, so a server may opt in to the old range.
CHANNEL_MAX_RFC5766: Final = 0x7FFF


class RelayEndpoint(Protocol):
    """What the core needs of a relay socket: a way to send to a peer (``socket.socket`` is
    one)."""

    def sendto(self, data: bytes, address: Address, /) -> int: ...


class RelayBinder(Protocol):
    """The I/O side of relay sockets, called synchronously by the core.

    ``bind`` raises OSError when the port is taken (the pool then tries another), and sets the
    DF bit on what the socket sends when ``dont_fragment`` is true (RFC 8656 §7.2 DONT-FRAGMENT);
    ``activate`` starts delivering the socket's datagrams for ``allocation``; ``close`` releases
    it (deactivating it first if needed).
    """

    def bind(self, family: int, port: int, dont_fragment: bool) -> RelayEndpoint: ...

    def activate(self, endpoint: RelayEndpoint, allocation: Allocation) -> None: ...

    def close(self, endpoint: RelayEndpoint) -> None: ...


def quota_key(username: str) -> str:
    """Whose quota an allocation counts against: a REST username ``<expiry>:<user>`` counts for
    ``<user>`` (its expiry changes with every credential minted), anything else as itself."""
    expiry, colon, user = username.partition(":")
    return user if colon and expiry.isdigit() else username


class NoRelays:
    """The binder of a core that no I/O layer has adopted: every bind fails (508)."""

    def bind(self, family: int, port: int, dont_fragment: bool) -> RelayEndpoint:
        raise OSError("no relay binder installed")

    def activate(self, endpoint: RelayEndpoint, allocation: Allocation) -> None:
        raise OSError("no relay binder installed")

    def close(self, endpoint: RelayEndpoint) -> None:
        """Nothing was bound."""


class Channel:
    """A channel binding (RFC 8656 §12): number <-> peer transport address, with its expiry."""

    __slots__ = ("expires", "number", "peer", "prefix")

    def __init__(self, number: int, peer: Address, expires: float) -> None:
        self.number = number
        self.peer = peer
        self.expires = expires
        self.prefix = number.to_bytes(2, "big")  # the ChannelData header's first two bytes


class Allocation:
    """One client's allocation; see the module docstring. Mutable, owned by the table."""

    __slots__ = (
        "budget",
        "channel_by_peer",
        "channels",
        "credential_expiry",
        "family",
        "five_tuple",
        "key",
        "last_response",
        "last_transaction",
        "lifetime_expires",
        "peer_headers",
        "permissions",
        "relay",
        "relayed",
        "stream",
        "username",
    )

    def __init__(
        self,
        five_tuple: FiveTuple,
        *,
        username: str,
        key: bytes,
        relay: RelayEndpoint,
        relayed: Address,
        family: int,
        expires: float,
        budget: float,
        credential_expiry: float | None = None,
    ) -> None:
        self.five_tuple = five_tuple
        self.stream = five_tuple[0] != "udp"
        self.username = username
        self.key = key  # the long-term key, to protect responses
        self.relay = relay
        self.relayed = relayed  # the address advertised in XOR-RELAYED-ADDRESS
        self.family = family  # 4 or 6
        self.lifetime_expires = expires
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, Channel] = {}
        self.channel_by_peer: dict[Address, Channel] = {}
        self.budget = budget  # bytes that may still be relayed; refilled by the table's tick
        self.credential_expiry = credential_expiry  # REST expiry, enforced in strict mode
        self.last_transaction = b""
        self.last_response = b""
        self.peer_headers: dict[Address, bytes] = {}  # cached XOR-PEER-ADDRESS values (IPv4)

    def permits(self, peer_ip: str, now: float) -> bool:
        """Whether an unexpired permission covers ``peer_ip`` (RFC 8656 §9)."""
        return self.permissions.get(peer_ip, 0.0) > now

    def expire(self, now: float) -> None:
        """Drop permissions and channel bindings whose time has passed."""
        for ip in [ip for ip, until in self.permissions.items() if until <= now]:
            del self.permissions[ip]
        for number in [n for n, ch in self.channels.items() if ch.expires <= now]:
            channel = self.channels.pop(number)
            del self.channel_by_peer[channel.peer]


@dataclass(slots=True)
class Reservation:
    """A relay port held for a later Allocate with RESERVATION-TOKEN (RFC 8656 §7.2, EVEN-PORT
    with the R bit)."""

    endpoint: RelayEndpoint
    port: int
    expires: float
    family: int = 4


class AllocationTable:
    """All allocations of one process, indexed for control messages and for the fast path."""

    __slots__ = ("_by_tuple", "by_user", "reservations", "udp_by_local")

    def __init__(self) -> None:
        self._by_tuple: dict[FiveTuple, Allocation] = {}
        #: local (ip, port) -> client (ip, port) -> allocation; UDP allocations only.
        self.udp_by_local: dict[Address, dict[Address, Allocation]] = {}
        self.by_user: dict[str, int] = {}
        self.reservations: dict[bytes, Reservation] = {}

    def __len__(self) -> int:
        return len(self._by_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self._by_tuple.values()))

    def get(self, five_tuple: FiveTuple) -> Allocation | None:
        return self._by_tuple.get(five_tuple)

    def add(self, allocation: Allocation) -> None:
        transport, client, local = allocation.five_tuple
        self._by_tuple[allocation.five_tuple] = allocation
        if transport == "udp":
            self.udp_by_local.setdefault(local, {})[client] = allocation
        key = quota_key(allocation.username)
        self.by_user[key] = self.by_user.get(key, 0) + 1

    def remove(self, allocation: Allocation) -> None:
        transport, client, local = allocation.five_tuple
        if self._by_tuple.pop(allocation.five_tuple, None) is None:
            return
        if transport == "udp":
            self.udp_by_local.get(local, {}).pop(client, None)
        key = quota_key(allocation.username)
        count = self.by_user.get(key, 1) - 1
        if count:
            self.by_user[key] = count
        else:
            self.by_user.pop(key, None)

    def counts(self) -> tuple[int, int, int]:
        """(allocations, permissions, channels) now, for gauges."""
        permissions = channels = 0
        for allocation in self._by_tuple.values():
            permissions += len(allocation.permissions)
            channels += len(allocation.channels)
        return len(self._by_tuple), permissions, channels


@dataclass
class RelayPortPool:
    """Chooses relay ports in ``[low, high]`` (RFC 8656 §7.2: 49152-65535 by default) and tracks
    the ones in use per family. Random order, so relayed addresses are not predictable."""

    low: int = 49152
    high: int = 65535
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))
    _used: dict[int, set[int]] = field(default_factory=lambda: {4: set(), 6: set()})

    def __post_init__(self) -> None:
        if not 1024 <= self.low <= self.high <= 65535:
            raise ValueError("relay port range must lie within 1024-65535, low <= high")

    def candidates(self, family: int, *, even: bool = False, tries: int = 64) -> Iterator[int]:
        """Up to ``tries`` free ports (even ones only if asked), in random order."""
        used = self._used[family]
        span = self.high - self.low + 1
        start = self.rng.randrange(span)
        given = 0
        for i in range(span):
            port = self.low + (start + i) % span
            if port in used or (even and port & 1):
                continue
            yield port
            given += 1
            if given >= tries:
                return

    def take(self, family: int, port: int) -> None:
        self._used[family].add(port)

    def release(self, family: int, port: int) -> None:
        self._used[family].discard(port)

    def in_use(self, family: int) -> int:
        return len(self._used[family])
