"""The relay hot path: ChannelData and Data indications, without the general STUN codec.

Two directions, both called per relayed datagram by the I/O layer:

* :func:`route_channel_data`: a ChannelData message from a client (RFC 8656 §12.4-12.5) ->
  the channel whose peer receives its payload, or None to drop (counted).
* :func:`wrap_peer_data`: a datagram that arrived on a relay socket from a peer
  (RFC 8656 §11.3, §12.6) -> the ChannelData message or Data indication for the client, or None.

What the hot path avoids: STUN decoding (ChannelData is recognised by its first two bits, 01),
logging, exceptions, and object creation beyond the output bytes. Counters are plain integer
attributes: the server's (:class:`RelayCounters`) and the allocation's own four (packets and
bytes each way, read for accounting when asked, never per datagram). The bandwidth budget is a
per-allocation number the table refills every tick.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Final, Protocol

from secureconnect.stun import AttrType, encode_xor_address
from secureconnect.stun.constants import FINGERPRINT_XOR, MAGIC_COOKIE
from secureconnect.turn.allocation import (
    CHANNEL_MAX,
    CHANNEL_MAX_RFC5766,
    CHANNEL_MIN,
    Address,
    Channel,
    RelayMirror,
)

_DATA_INDICATION: Final = 0x0017  # RFC 8656 §17: Data (0x007) with the indication class bits
_COOKIE: Final = MAGIC_COOKIE.to_bytes(4, "big")
_XOR_PEER: Final = int(AttrType.XOR_PEER_ADDRESS).to_bytes(2, "big")
_DATA: Final = int(AttrType.DATA).to_bytes(2, "big")
_PAD: Final = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # by length % 4
_XOR_PEER_ATTR: Final = int(AttrType.XOR_PEER_ADDRESS)
_DATA_ATTR: Final = int(AttrType.DATA)
_DONT_FRAGMENT_ATTR: Final = int(AttrType.DONT_FRAGMENT)
_FINGERPRINT_ATTR: Final = int(AttrType.FINGERPRINT)
_MAX_PEER_HEADERS: Final = 256  # cached XOR-PEER-ADDRESS encodings per allocation
#: The largest DATA value whose Data indication still fits the 16-bit STUN length: 0xFFFC minus
#: XOR-PEER-ADDRESS (IPv6: 4 + 20) and the DATA header (4), rounded down to a multiple of 4.
_MAX_DATA_INDICATION_PAYLOAD: Final = 0xFFFC - 24 - 4


class RelayState(Protocol):
    """What the hot path reads and writes of an allocation: an
    :class:`~secureconnect.turn.allocation.Allocation`, or the pure-Python fast path's copy of
    one (``turn.pyfastpath``)."""

    permissions: dict[str, float]
    channels: dict[int, Channel]
    channel_by_peer: dict[Address, Channel]
    peer_headers: dict[Address, bytes]
    budget: float
    stream: bool
    mirror: RelayMirror | None
    # its relayed traffic, counted beside RelayCounters' (docs/metrics.md)
    to_peer_packets: int
    to_peer_bytes: int
    to_client_packets: int
    to_client_bytes: int


@dataclass(slots=True)
class RelayCounters:
    """Hot-path counters (read by /metrics): packets and bytes each way, drops by reason."""

    to_peer_packets: int = 0
    to_peer_bytes: int = 0
    to_client_packets: int = 0
    to_client_bytes: int = 0
    dropped_no_allocation: int = 0
    dropped_bad_channel: int = 0
    dropped_no_permission: int = 0
    dropped_bandwidth: int = 0
    dropped_malformed: int = 0
    dropped_own_port: int = 0  # a Send to one of the server's own service ports


def route_channel_data(
    allocation: RelayState, data: bytes, now: float, counters: RelayCounters
) -> Channel | None:
    """The channel a client's ChannelData message goes out on; the caller sends
    ``data[4:4 + length]`` to ``channel.peer`` from ``allocation.relay``.

    RFC 8656 §12.4: the length field counts the application data only; over UDP the datagram
    may be longer (padding), never shorter.
    """
    size = len(data)
    if size < 4:
        counters.dropped_malformed += 1
        return None
    number = (data[0] << 8) | data[1]
    length = (data[2] << 8) | data[3]
    if length > size - 4:
        counters.dropped_malformed += 1
        return None
    channel = allocation.channels.get(number)
    # RFC 8656 §12.5: data on a channel that is not bound is discarded.
    if channel is None or channel.expires <= now:
        counters.dropped_bad_channel += 1
        return None
    # RFC 8656 §9: relaying needs a permission for the peer's IP address.
    if allocation.permissions.get(channel.peer[0], 0.0) <= now:
        counters.dropped_no_permission += 1
        return None
    if not spend_to_peer(allocation, length, counters):
        return None
    return channel


def spend_to_peer(allocation: RelayState, size: int, counters: RelayCounters) -> bool:
    """Take ``size`` bytes from the allocation's bandwidth budget for a datagram to a peer;
    False (counted) when the cap is reached. The budget of an allocation the compiled fast
    path mirrors lives there (which counts its refusals itself)."""
    mirror = allocation.mirror
    if mirror is not None:
        if not mirror.spend(size):
            return False
    else:
        allocation.budget -= size
        if allocation.budget < 0:
            allocation.budget += size
            counters.dropped_bandwidth += 1
            return False
    counters.to_peer_packets += 1
    counters.to_peer_bytes += size
    allocation.to_peer_packets += 1
    allocation.to_peer_bytes += size
    return True


def wrap_peer_data(
    allocation: RelayState,
    data: bytes,
    peer: Address,
    now: float,
    counters: RelayCounters,
    *,
    rng: random.Random,
) -> bytes | None:
    """The message that carries a peer's datagram to the client, or None to drop it.

    RFC 8656 §11.3 and §12.6: without a permission for the peer's IP the datagram is discarded;
    with a channel bound to the peer's (ip, port) it goes as ChannelData (padded to 4 bytes on
    TCP/TLS, RFC 8656 §12.5), otherwise as a Data indication.
    """
    if allocation.permissions.get(peer[0], 0.0) <= now:
        counters.dropped_no_permission += 1
        return None
    size = len(data)
    if size > _MAX_DATA_INDICATION_PAYLOAD:
        # A STUN length is 16 bits: a datagram this large fits no Data indication (and no UDP
        # datagram to the client once framed); dropping it keeps the encoder from overflowing.
        counters.dropped_malformed += 1
        return None
    allocation.budget -= size
    if allocation.budget < 0:  # the per-allocation bandwidth cap
        allocation.budget += size
        counters.dropped_bandwidth += 1
        return None
    counters.to_client_packets += 1
    counters.to_client_bytes += size
    allocation.to_client_packets += 1
    allocation.to_client_bytes += size
    channel = allocation.channel_by_peer.get(peer)
    if channel is not None and channel.expires > now:
        header = channel.prefix + size.to_bytes(2, "big")
        if allocation.stream:
            return header + data + _PAD[size & 3]
        return header + data
    return _data_indication(allocation, data, peer, rng)


def _data_indication(
    allocation: RelayState, data: bytes, peer: Address, rng: random.Random
) -> bytes:
    """RFC 8656 §11.3: a Data indication with XOR-PEER-ADDRESS and DATA, built directly."""
    size = len(data)
    transaction_id = rng.randbytes(12)  # RFC 8489 §6: random; indications need no secrecy
    if ":" in peer[0]:
        # IPv6 XOR uses the transaction id, so the attribute cannot be cached.
        xor_peer = encode_xor_address(peer[0], peer[1], transaction_id)
    else:
        cache = allocation.peer_headers
        xor_peer = cache.get(peer, b"")
        if not xor_peer:
            if len(cache) >= _MAX_PEER_HEADERS:
                cache.clear()
            xor_peer = cache[peer] = encode_xor_address(peer[0], peer[1], transaction_id)
    body_length = 4 + len(xor_peer) + 4 + size + (-size & 3)
    return b"".join(
        (
            _DATA_INDICATION.to_bytes(2, "big"),
            body_length.to_bytes(2, "big"),
            _COOKIE,
            transaction_id,
            _XOR_PEER,
            len(xor_peer).to_bytes(2, "big"),
            xor_peer,
            _DATA,
            size.to_bytes(2, "big"),
            data,
            _PAD[size & 3],
        )
    )


def valid_channel_number(number: int, *, rfc5766: bool = False) -> bool:
    """RFC 8656 §12: 0x4000 through 0x4FFF (RFC 5766 §11: through 0x7FFF, when opted in)."""
    return CHANNEL_MIN <= number <= (CHANNEL_MAX_RFC5766 if rfc5766 else CHANNEL_MAX)


def split_send_indication_untrusted(data: bytes) -> tuple[bytes, bytes] | None:
    """(XOR-PEER-ADDRESS value, DATA value) of a Send indication in its plain shape - cookie,
    a consistent length, only those two attributes plus DONT-FRAGMENT, and optionally a valid
    FINGERPRINT last (coturn's clients add one) - or None, which sends the message down the
    general codec (a FINGERPRINT that does not match, anything unusual). Never raises: the
    bytes are untrusted."""
    end = len(data)
    if end < 20 or data[4:8] != _COOKIE or ((data[2] << 8) | data[3]) != end - 20:
        return None
    peer = payload = None
    offset = 20
    while offset + 4 <= end:
        atype = (data[offset] << 8) | data[offset + 1]
        size = (data[offset + 2] << 8) | data[offset + 3]
        start = offset + 4
        stop = start + size
        if stop > end:
            return None
        if atype == _XOR_PEER_ATTR:
            if peer is None:  # RFC 8489 §14: only the first occurrence counts
                peer = data[start:stop]
        elif atype == _DATA_ATTR:
            if payload is None:
                payload = data[start:stop]
        elif atype == _FINGERPRINT_ATTR:
            # RFC 8489 §14.7: FINGERPRINT is the last attribute; its CRC-32 covers the message
            # up to it, XORed with 0x5354554e.
            crc = zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR
            if size != 4 or stop != end or data[start:stop] != crc.to_bytes(4, "big"):
                return None
        elif atype != _DONT_FRAGMENT_ATTR:
            return None
        offset = start + ((size + 3) & ~3)
    if offset != end or peer is None or payload is None:
        return None
    return peer, payload
