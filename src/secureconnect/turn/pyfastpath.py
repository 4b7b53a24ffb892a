"""The UDP fast path in pure Python: the twin of the compiled ``turn._fastpath`` (docs/fastpath.md).

Same API, same behaviour, same counters: a differential test holds the two to that. This one
runs when the extension is not installed or ``SECURECONNECT_NO_EXTENSIONS`` is set, and it is the
reference the C code is read against. It keeps its own copy of each UDP client's allocation (the
core pushes every change, :class:`~secureconnect.turn.allocation.RelayMirror`), and relays with
the hot-path functions of :mod:`~secureconnect.turn.relaypath`, one ``recvfrom_into`` and one
``sendto`` per datagram.

The compiled twin takes descriptors only; this one also needs the socket objects behind them
(``sockets``: descriptor -> socket, the data plane's own live mapping), since Python sends
through socket objects.
"""

from __future__ import annotations

import random
import secrets
import socket
from collections.abc import Iterator, Mapping

from secureconnect.stun import StunDecodeError, decode_xor_address_untrusted
from secureconnect.turn.allocation import Address, Channel, RelayMirror
from secureconnect.turn.relaypath import (
    RelayCounters,
    route_channel_data,
    spend_to_peer,
    split_send_indication_untrusted,
    wrap_peer_data,
)

RECV_SIZE = 65536  # a relayed UDP datagram may be up to 64 KiB
_SEND_INDICATION = b"\x00\x16"  # RFC 8656 §17: Send (0x006), indication class


def received(sock: socket.socket, buffer: bytearray, limit: int) -> Iterator[tuple[bytes, Address]]:
    """Up to ``limit`` datagrams waiting on the non-blocking ``sock``, as (data, source) with
    IPv6 sources trimmed to (ip, port), read into ``buffer`` (``recvfrom_into`` saves the 64 KiB
    allocation ``recvfrom`` makes per datagram). Queued ICMP errors from earlier sends are
    skipped; a closed socket ends it."""
    recvfrom_into = sock.recvfrom_into
    view = memoryview(buffer)
    for _ in range(limit):
        try:
            size, source = recvfrom_into(buffer)
        except BlockingIOError:
            return
        except OSError:
            if sock.fileno() < 0:
                return
            continue  # e.g. ECONNREFUSED from an earlier send: never fatal for a UDP socket
        yield bytes(view[:size]), (source[0], source[1])


class _Entry:
    """One UDP client's allocation as the fast path sees it: what ``relaypath`` reads of an
    :class:`~secureconnect.turn.allocation.Allocation`, plus where its traffic goes."""

    __slots__ = (
        "budget",
        "channel_by_peer",
        "channels",
        "client",
        "listener_fd",
        "mirror",
        "own_ports",
        "peer_headers",
        "permissions",
        "relay_fd",
        "stream",
        "to_client_bytes",
        "to_client_packets",
        "to_peer_bytes",
        "to_peer_packets",
    )

    def __init__(self, relay_fd: int, listener_fd: int, client: Address, budget: float) -> None:
        self.relay_fd = relay_fd
        self.listener_fd = listener_fd
        self.client = client
        self.budget = budget
        self.stream = False  # UDP clients only: ChannelData is not padded (RFC 8656 §12.5)
        self.mirror: RelayMirror | None = None  # this is the copy: the budget lives here
        self.permissions: dict[str, float] = {}
        self.own_ports: dict[str, tuple[int, ...]] = {}
        self.channels: dict[int, Channel] = {}
        self.channel_by_peer: dict[Address, Channel] = {}
        self.peer_headers: dict[Address, bytes] = {}
        self.to_peer_packets = self.to_peer_bytes = 0  # counted by relaypath, as RelayCounters
        self.to_client_packets = self.to_client_bytes = 0


class PyFastPath:
    """The pure-Python fast path; see the module docstring and docs/fastpath.md."""

    def __init__(
        self, sockets: Mapping[int, socket.socket], *, batch: int = 64, seed: int | None = None
    ) -> None:
        self.sockets = sockets
        self.batch = batch
        self.rng = random.Random(secrets.randbits(64) if seed is None else seed)
        self.relay = RelayCounters()
        self.send_errors = 0
        self._by_relay: dict[int, _Entry] = {}
        self._by_client: dict[tuple[int, Address], _Entry] = {}
        self._buffer = bytearray(RECV_SIZE)

    # -- tables ------------------------------------------------------------------------------

    def add(self, relay_fd: int, listener_fd: int, client: Address, budget: float) -> None:
        if relay_fd in self._by_relay:
            raise ValueError(f"relay descriptor {relay_fd} is already mirrored")
        entry = _Entry(relay_fd, listener_fd, (client[0], client[1]), budget)
        self._by_relay[relay_fd] = entry
        self._by_client[(listener_fd, entry.client)] = entry

    def remove(self, relay_fd: int) -> None:
        entry = self._by_relay.pop(relay_fd, None)
        if entry is not None:
            self._by_client.pop((entry.listener_fd, entry.client), None)

    def permit(self, relay_fd: int, ip: str, expires: float, own_ports: tuple[int, ...]) -> None:
        entry = self._by_relay[relay_fd]
        entry.permissions[ip] = expires
        entry.own_ports[ip] = tuple(own_ports)

    def forget_permission(self, relay_fd: int, ip: str) -> None:
        entry = self._by_relay.get(relay_fd)
        if entry is not None:
            entry.permissions.pop(ip, None)
            entry.own_ports.pop(ip, None)

    def bind_channel(self, relay_fd: int, number: int, peer: Address, expires: float) -> None:
        entry = self._by_relay[relay_fd]
        peer = (peer[0], peer[1])
        channel = entry.channels.get(number)
        if channel is None or channel.peer != peer:
            if channel is not None:
                entry.channel_by_peer.pop(channel.peer, None)
            channel = entry.channels[number] = Channel(number, peer, expires)
            entry.channel_by_peer[peer] = channel
        channel.expires = expires

    def forget_channel(self, relay_fd: int, number: int) -> None:
        entry = self._by_relay.get(relay_fd)
        if entry is not None:
            channel = entry.channels.pop(number, None)
            if channel is not None:
                entry.channel_by_peer.pop(channel.peer, None)

    def budget(self, relay_fd: int) -> float:
        return self._by_relay[relay_fd].budget

    def set_budget(self, relay_fd: int, value: float) -> None:
        self._by_relay[relay_fd].budget = value

    def spend(self, relay_fd: int, size: int) -> bool:
        entry = self._by_relay[relay_fd]
        entry.budget -= size  # the same float operations as relaypath.spend_to_peer
        if entry.budget < 0:
            entry.budget += size
            self.relay.dropped_bandwidth += 1
            return False
        return True

    def traffic(self, relay_fd: int) -> tuple[int, int, int, int]:
        entry = self._by_relay[relay_fd]
        return (
            entry.to_peer_packets,
            entry.to_peer_bytes,
            entry.to_client_packets,
            entry.to_client_bytes,
        )

    def counters(self) -> dict[str, int]:
        relay = self.relay
        return {
            "to_peer_packets": relay.to_peer_packets,
            "to_peer_bytes": relay.to_peer_bytes,
            "to_client_packets": relay.to_client_packets,
            "to_client_bytes": relay.to_client_bytes,
            "dropped_no_allocation": relay.dropped_no_allocation,
            "dropped_bad_channel": relay.dropped_bad_channel,
            "dropped_no_permission": relay.dropped_no_permission,
            "dropped_bandwidth": relay.dropped_bandwidth,
            "dropped_malformed": relay.dropped_malformed,
            "dropped_own_port": relay.dropped_own_port,
            "send_errors": self.send_errors,
        }

    # -- drains ------------------------------------------------------------------------------

    def drain_listener(
        self, listener_fd: int, now: float, limit: int
    ) -> list[tuple[bytes, Address]]:
        """Client -> server: relay ChannelData and plain Send indications of known clients,
        hand everything else back as (data, source)."""
        sock = self.sockets.get(listener_fd)
        if sock is None:
            return []
        by_client = self._by_client
        counters = self.relay
        unhandled: list[tuple[bytes, Address]] = []
        recvfrom_into, buffer = sock.recvfrom_into, self._buffer
        view = memoryview(buffer)
        # ``received``'s loop, inlined: a generator resume per datagram cost ~10% here.
        for _ in range(limit):
            try:
                size, address = recvfrom_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                if sock.fileno() < 0:
                    break
                continue
            data, source = bytes(view[:size]), (address[0], address[1])
            if data and data[0] >> 6 == 1:  # ChannelData (RFC 8656 §12)
                entry = by_client.get((listener_fd, source))
                if entry is None:
                    counters.dropped_no_allocation += 1
                    continue
                channel = route_channel_data(entry, data, now, counters)
                if channel is not None:
                    self._send(
                        entry.relay_fd, data[4 : 4 + ((data[2] << 8) | data[3])], channel.peer
                    )
                continue
            if data[:2] == _SEND_INDICATION:
                entry = by_client.get((listener_fd, source))
                parts = split_send_indication_untrusted(data) if entry is not None else None
                if entry is not None and parts is not None:
                    self._relay_send(entry, parts[0], parts[1], data[8:20], now)
                    continue
            unhandled.append((data, source))
        return unhandled

    def _relay_send(
        self, entry: _Entry, peer_value: bytes, payload: bytes, transaction_id: bytes, now: float
    ) -> None:
        """RFC 8656 §11.2 (Send) as the core's ``_relay_send`` does it: a malformed peer, then
        the permission, then the server's own ports, then the budget."""
        counters = self.relay
        try:
            peer = decode_xor_address_untrusted(peer_value, transaction_id)
        except StunDecodeError:
            counters.dropped_malformed += 1
            return
        if entry.permissions.get(peer[0], 0.0) <= now:
            counters.dropped_no_permission += 1
            return
        if peer[1] in entry.own_ports.get(peer[0], ()):
            counters.dropped_own_port += 1
            return
        if spend_to_peer(entry, len(payload), counters):
            self._send(entry.relay_fd, payload, peer)

    def drain_relay(self, relay_fd: int, now: float, limit: int) -> int:
        """Peer -> client: wrap each datagram (``relaypath.wrap_peer_data``) and send it from
        the listening socket the client's requests came to. Returns how many were read."""
        entry = self._by_relay.get(relay_fd)
        sock = self.sockets.get(relay_fd)
        if entry is None or sock is None:
            return 0
        counters, rng = self.relay, self.rng
        read = 0
        recvfrom_into, buffer = sock.recvfrom_into, self._buffer
        view = memoryview(buffer)
        for _ in range(limit):  # ``received``'s loop, inlined (see drain_listener)
            try:
                size, address = recvfrom_into(buffer)
            except BlockingIOError:
                break
            except OSError:
                if sock.fileno() < 0:
                    break
                continue
            read += 1
            data, peer = bytes(view[:size]), (address[0], address[1])
            out = wrap_peer_data(entry, data, peer, now, counters, rng=rng)
            if out is not None and not self._send(entry.listener_fd, out, entry.client):
                # Not relayed after all: the counters say what reached the client.
                counters.to_client_packets -= 1
                counters.to_client_bytes -= len(data)
                entry.to_client_packets -= 1
                entry.to_client_bytes -= len(data)
        return read

    def _send(self, fd: int, data: bytes, address: Address) -> bool:
        sock = self.sockets.get(fd)
        try:
            if sock is not None:
                sock.sendto(data, address)
                return True
        except OSError:
            pass
        self.send_errors += 1
        return False
