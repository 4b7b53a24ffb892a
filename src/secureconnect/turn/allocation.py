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
5-tuple (the quota counts are :mod:`secureconnect.turn.quotas`'). A UDP client's allocation also
has a copy in the UDP fast path (``turn.fastpath``, docs/fastpath.md): :attr:`Allocation.mirror`,
which every change below is pushed to.

Accounting: an allocation counts its own relayed traffic (packets and bytes each way, beside the
server's counters, by ``relaypath`` and by the fast path's copy), read when asked
(:meth:`Allocation.traffic`). When it ends, :class:`AllocationEnded` records its totals and why
it ended (:data:`ENDED_REASONS`), for the log line and the metrics (docs/metrics.md).

:class:`RelayPortPool` chooses relay port numbers in the configured range and remembers which it
handed out; binding a socket to one is the I/O layer's job (:class:`RelayBinder`), so a port that
another process holds is skipped and the next candidate tried.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from secureconnect.netaddr import Address

# Address is re-exported: the TURN modules import it from here, beside FiveTuple.
__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MAX_RFC5766",
    "CHANNEL_MIN",
    "ENDED_REASONS",
    "Address",
    "Allocation",
    "AllocationEnded",
    "AllocationTable",
    "Channel",
    "FiveTuple",
    "RelayBinder",
    "RelayEndpoint",
    "RelayMirror",
    "RelayPortPool",
    "Reservation",
    "Traffic",
    "quota_key",
    "source_key",
]

#: RFC 8656 §2.2: (transport, client address, server address); transport is "udp", "tcp" or
#: "tls", and for TCP/TLS the pair of addresses names the connection.
FiveTuple = tuple[str, Address, Address]

#: RFC 8656 §12: channel numbers 0x4000 through 0x4FFF are the valid range.
CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF
#: RFC 5766 §11 allowed 0x4000 through 0x7FFF; some clients (coturn's turnutils_uclient) still
#: pick numbers up there, so a server may opt in to the old range.
CHANNEL_MAX_RFC5766: Final = 0x7FFF
#: Why an allocation ended, the ``reason`` of ``allocation-ended`` and of
#: ``turn_allocations_ended_total``: ``deleted`` (the client's Refresh with LIFETIME 0, RFC 8656
#: §7.3), ``expired`` (not refreshed in time, §7.3), ``connection_closed`` (its TCP/TLS
#: connection ended, §3.1), ``credential_expired`` (its REST credential expired, with
#: ``turn.strict_expiry``), ``shutdown`` (the server stopped); ``killed`` and ``revoked`` are kept
#: for an operator's command (ending one session, or every session of a user).
ENDED_REASONS: Final = (
    "deleted",
    "expired",
    "connection_closed",
    "credential_expired",
    "shutdown",
    "killed",
    "revoked",
)


class Traffic(NamedTuple):
    """Relayed packets and bytes each way: client -> peer (``to_peer``) and peer -> client."""

    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0

    def minus(self, other: Traffic) -> Traffic:
        """What was counted since ``other`` (an earlier reading of the same counters)."""
        return Traffic(*(a - b for a, b in zip(self, other, strict=True)))


class RelayMirror(Protocol):
    """A copy of one allocation's relay state kept by the UDP fast path (``turn.fastpath``,
    compiled or its pure-Python twin; docs/fastpath.md): the allocation pushes every change to
    it, and its bandwidth budget lives there (the fast path spends it without calling back)."""

    def permit(self, ip: str, expires: float, own_ports: tuple[int, ...]) -> None: ...
    def forget_permission(self, ip: str) -> None: ...
    def bind_channel(self, number: int, peer: Address, expires: float) -> None: ...
    def forget_channel(self, number: int) -> None: ...
    def spend(self, size: int) -> bool: ...
    def refill(self, rate: float, elapsed: float) -> None: ...
    def traffic(self) -> tuple[int, int, int, int]: ...


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


def source_key(ip: str) -> str:
    """Which client address an allocation counts against for the per-address quota: an IPv4
    address as itself, an IPv6 address by its /64 (one subscriber's prefix: a host picks any
    address in it, so a per-address count would not bound it), an IPv4-mapped one as IPv4."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


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
        "created",
        "credential_expiry",
        "family",
        "five_tuple",
        "key",
        "last_response",
        "last_transaction",
        "lifetime_expires",
        "mirror",
        "peer_headers",
        "permissions",
        "relay",
        "relayed",
        "settled",
        "stream",
        "to_client_bytes",
        "to_client_packets",
        "to_peer_bytes",
        "to_peer_packets",
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
        created: float = 0.0,
    ) -> None:
        self.five_tuple = five_tuple
        self.created = created  # the core's clock, for its lifetime when it ends
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
        #: the UDP fast path's copy of this allocation (UDP clients' only): every change below
        #: is pushed to it, and it holds the bandwidth budget
        self.mirror: RelayMirror | None = None
        #: what ``relaypath`` relayed of it here (a UDP client's fast path counts in its copy)
        self.to_peer_packets = self.to_peer_bytes = 0
        self.to_client_packets = self.to_client_bytes = 0
        #: its traffic as last handed to the per-user accounting (``settings.settle_users``)
        self.settled = Traffic()

    def traffic(self) -> Traffic:
        """Packets and bytes relayed each way so far: its own counts plus its fast path
        copy's (read now: a C call for the compiled path, nothing counted per datagram)."""
        mirror = self.mirror
        if mirror is None:
            return Traffic(
                self.to_peer_packets,
                self.to_peer_bytes,
                self.to_client_packets,
                self.to_client_bytes,
            )
        peer_packets, peer_bytes, client_packets, client_bytes = mirror.traffic()
        return Traffic(  # no generator: /metrics reads every live allocation
            self.to_peer_packets + peer_packets,
            self.to_peer_bytes + peer_bytes,
            self.to_client_packets + client_packets,
            self.to_client_bytes + client_bytes,
        )

    def ended(self, now: float, reason: str) -> AllocationEnded:
        """It ends, for ``reason``: its totals from now on are its own (the fast path's copy is
        about to go, and its relay descriptor may be reused at once), and the record of it."""
        total = self.traffic()
        self.mirror = None
        self.to_peer_packets, self.to_peer_bytes, self.to_client_packets, self.to_client_bytes = (
            total
        )
        transport, client, _ = self.five_tuple
        unsettled, self.settled = total.minus(self.settled), total
        return AllocationEnded(
            self.username,
            transport,
            client,
            self.relayed,
            self.created,
            now,
            reason,
            total,
            unsettled,
        )

    def permits(self, peer_ip: str, now: float) -> bool:
        """Whether an unexpired permission covers ``peer_ip`` (RFC 8656 §9)."""
        return self.permissions.get(peer_ip, 0.0) > now

    def permit(self, ip: str, expires: float, own_ports: tuple[int, ...] = ()) -> None:
        """Install or refresh the permission for ``ip`` (RFC 8656 §9) until ``expires``;
        ``own_ports``: the server's own service ports on that address (never relayed to)."""
        self.permissions[ip] = expires
        if self.mirror is not None:
            self.mirror.permit(ip, expires, own_ports)

    def bind_channel(self, number: int, peer: Address, expires: float) -> Channel:
        """Bind (or refresh) channel ``number`` to ``peer`` until ``expires`` (RFC 8656 §12);
        the caller has checked that neither is bound to another."""
        channel = self.channels.get(number)
        if channel is None:
            channel = self.channels[number] = Channel(number, peer, expires)
            self.channel_by_peer[peer] = channel
        channel.expires = expires
        if self.mirror is not None:
            self.mirror.bind_channel(number, peer, expires)
        return channel

    def refill(self, rate: float, elapsed: float) -> None:
        """Add ``elapsed`` seconds of ``rate`` bytes/s to the bandwidth budget, at most one
        second's worth (the fast path's copy when there is one)."""
        if self.mirror is not None:
            self.mirror.refill(rate, elapsed)
        else:
            self.budget = min(rate, self.budget + rate * elapsed)

    def expire(self, now: float) -> None:
        """Drop permissions and channel bindings whose time has passed."""
        mirror = self.mirror
        for ip in [ip for ip, until in self.permissions.items() if until <= now]:
            del self.permissions[ip]
            if mirror is not None:
                mirror.forget_permission(ip)
        for number in [n for n, ch in self.channels.items() if ch.expires <= now]:
            channel = self.channels.pop(number)
            del self.channel_by_peer[channel.peer]
            if mirror is not None:
                mirror.forget_channel(number)


@dataclass(frozen=True, slots=True)
class AllocationEnded:
    """An allocation that ended: who, from where, its relayed address, its lifetime, why
    (:data:`ENDED_REASONS`) and its totals. The I/O layer logs it (``allocation-ended``); the
    core's counters take the lifetime and the user's traffic from it."""

    username: str
    transport: str  # "udp", "tcp" or "tls"
    client: Address
    relayed: Address
    created: float
    ended: float  # the core's clock
    reason: str
    traffic: Traffic
    #: what the per-user accounting has not counted yet (it counts live allocations too)
    unsettled: Traffic = field(default_factory=Traffic)

    @property
    def user(self) -> str:
        """Whose it was: a REST name's user part (``quota_key``), else the username."""
        return quota_key(self.username)

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.created)

    def log_fields(self) -> dict[str, object]:
        """The fields of its log line (``secureconnect.logs.fields``)."""
        traffic = self.traffic
        return {
            "user": self.user,
            "username": self.username,
            "transport": self.transport,
            "client": f"{_host(self.client[0])}:{self.client[1]}",
            "relayed": f"{_host(self.relayed[0])}:{self.relayed[1]}",
            "reason": self.reason,
            "duration_s": round(self.duration, 3),
            "to_peer_packets": traffic.to_peer_packets,
            "to_peer_bytes": traffic.to_peer_bytes,
            "to_client_packets": traffic.to_client_packets,
            "to_client_bytes": traffic.to_client_bytes,
        }


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(slots=True)
class Reservation:
    """A relay port held for a later Allocate with RESERVATION-TOKEN (RFC 8656 §7.2, EVEN-PORT
    with the R bit)."""

    endpoint: RelayEndpoint
    port: int
    expires: float
    family: int = 4
    #: whose quotas it counts against until an Allocate takes it (``quota_key``, ``source_key``)
    user: str = ""
    source: str = ""


class AllocationTable:
    """All allocations of one process, indexed by 5-tuple, and the reservations by token.

    The quota counts live in :class:`~secureconnect.turn.quotas.QuotaBook` (shared by every
    worker): :class:`~secureconnect.turn.manager.AllocationManager` takes a slot before it binds
    a relay socket and gives it back when the socket closes. A reservation holds a relay socket,
    so it counts like an allocation until an Allocate takes it or it expires (a client that
    reserved and deleted in a loop once held 8,000 sockets outside every quota).
    """

    __slots__ = ("_by_tuple", "_reservations")

    def __init__(self) -> None:
        self._by_tuple: dict[FiveTuple, Allocation] = {}
        self._reservations: dict[bytes, Reservation] = {}

    def __len__(self) -> int:
        return len(self._by_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self._by_tuple.values()))

    def get(self, five_tuple: FiveTuple) -> Allocation | None:
        return self._by_tuple.get(five_tuple)

    def held(self) -> int:
        """Allocations plus reservations: the relay sockets this process holds."""
        return len(self._by_tuple) + len(self._reservations)

    def add(self, allocation: Allocation) -> None:
        self._by_tuple[allocation.five_tuple] = allocation

    def remove(self, allocation: Allocation) -> bool:
        """Remove ``allocation``; False when it was not (or no longer) in the table."""
        return self._by_tuple.pop(allocation.five_tuple, None) is not None

    @property
    def reservations(self) -> dict[bytes, Reservation]:
        """Token -> reservation (read-only use: :meth:`reserve` and :meth:`take_reservation`
        keep the counts)."""
        return self._reservations

    def reserve(self, token: bytes, reservation: Reservation) -> None:
        self._reservations[token] = reservation

    def take_reservation(self, token: bytes) -> Reservation | None:
        """Remove and return the reservation of ``token`` (its quota slot stays taken: the
        caller hands it on or gives it back)."""
        return self._reservations.pop(token, None)

    def give_back(self, token: bytes | None, reservation: Reservation | None) -> None:
        """Undo :meth:`take_reservation` for an Allocate that failed after taking it."""
        if token is not None and reservation is not None:
            self.reserve(token, reservation)

    def take_expired_reservations(self, now: float | None) -> list[Reservation]:
        """Remove and return the reservations expired by ``now`` (every one when None)."""
        tokens = [t for t, r in self._reservations.items() if now is None or r.expires <= now]
        return [r for t in tokens if (r := self.take_reservation(t)) is not None]

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
