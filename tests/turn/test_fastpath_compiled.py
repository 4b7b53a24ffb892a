"""The compiled UDP fast path alone (``secureconnect.turn._fastpath``, docs/fastpath.md), on
real non-blocking loopback sockets: ChannelData both ways, Data and Send indications, each drop
reason, budgets, expiry, IPv6, what goes back to Python, and random bytes.

Without the extension this module fails, unless SECURECONNECT_NO_EXTENSIONS says to do without
it (then it is skipped, with that reason).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sysconfig
import time
import tomllib
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
)
from secureconnect.turn.relaypath import split_send_indication_untrusted

try:
    from secureconnect.turn._fastpath import FastPath
except ImportError as exc:  # pragma: no cover - depends on the install
    if os.environ.get("SECURECONNECT_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip(
            f"SECURECONNECT_NO_EXTENSIONS is set and the extension is not built ({exc})",
            allow_module_level=True,
        )
    raise ImportError(
        "secureconnect.turn._fastpath is not built: `pip install -e .` needs a C compiler and "
        "the Python headers (scripts/install-system-deps.sh), or set SECURECONNECT_NO_EXTENSIONS"
    ) from exc

ROOT = Path(__file__).resolve().parents[2]
NOW = 1000.0
INF = float("inf")
CHANNEL = 0x4001
TID = bytes(range(1, 13))
DROPS = (
    "dropped_no_allocation",
    "dropped_bad_channel",
    "dropped_no_permission",
    "dropped_bandwidth",
    "dropped_malformed",
    "dropped_own_port",
)
Address = tuple[str, int]


# -- the rig --------------------------------------------------------------------------------


def udp(family: socket.AddressFamily, ip: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


def address(sock: socket.socket) -> Address:
    ip, port = sock.getsockname()[:2]
    return ip, port


@dataclass
class Plane:
    """A FastPath with one allocation: client -> listener, relay <-> peer."""

    fp: FastPath
    listener: socket.socket
    relay: socket.socket
    client: socket.socket
    peer: socket.socket
    stack: ExitStack

    @property
    def ip(self) -> str:
        return address(self.listener)[0]

    @property
    def peer_addr(self) -> Address:
        return address(self.peer)

    @property
    def client_addr(self) -> Address:
        return address(self.client)

    def extra_socket(self) -> socket.socket:
        """Another socket of the rig's family, closed with it."""
        return self.stack.enter_context(udp(self.listener.family, self.ip))

    def add(self, budget: float = INF) -> None:
        self.fp.add(self.relay.fileno(), self.listener.fileno(), self.client_addr, budget)

    def open_path(self, *, channel: bool = True, expires: float = NOW + 300) -> None:
        """A permission for the peer's IP, and a channel to the peer."""
        self.fp.permit(self.relay.fileno(), self.peer_addr[0], expires, ())
        if channel:
            self.fp.bind_channel(self.relay.fileno(), CHANNEL, self.peer_addr, expires)

    def from_client(
        self, now: float, *datagrams: bytes, sender: socket.socket | None = None
    ) -> list[tuple[bytes, Address]]:
        """Send datagrams to the listener, then drain it until each is accounted for: handed
        back, relayed or dropped (relayed-then-failed counts as relayed)."""
        for data in datagrams:
            (sender or self.client).sendto(data, address(self.listener))
        return drain_listener(self.fp, self.listener.fileno(), now, len(datagrams))

    def from_peer(self, now: float, *datagrams: bytes, sender: socket.socket | None = None) -> None:
        for data in datagrams:
            (sender or self.peer).sendto(data, address(self.relay))
        drain_relay(self.fp, self.relay.fileno(), now, len(datagrams))


def accounted(fp: FastPath) -> int:
    c = fp.counters()
    return c["to_peer_packets"] + sum(c[name] for name in DROPS)


def drain_listener(fp: FastPath, fd: int, now: float, expected: int) -> list[tuple[bytes, Address]]:
    before = accounted(fp)
    out: list[tuple[bytes, Address]] = []
    deadline = time.monotonic() + 2
    while accounted(fp) - before + len(out) < expected and time.monotonic() < deadline:
        out += fp.drain_listener(fd, now, 256)
    assert accounted(fp) - before + len(out) == expected
    return out


def drain_relay(fp: FastPath, fd: int, now: float, expected: int) -> None:
    read, deadline = 0, time.monotonic() + 2
    while read < expected and time.monotonic() < deadline:
        read += fp.drain_relay(fd, now, 256)
    assert read == expected


def receive(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, Address]:
    assert select.select([sock], [], [], timeout)[0], "nothing arrived"
    data, source = sock.recvfrom(70000)
    return data, (source[0], source[1])


def assert_silent(sock: socket.socket) -> None:
    assert not select.select([sock], [], [], 0.05)[0], sock.recv(70000)


def changes(fp: FastPath, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in fp.counters().items() if v != before[k]}


@contextmanager
def rig(
    family: socket.AddressFamily = socket.AF_INET, *, add: bool = True, **kwargs: int
) -> Iterator[Plane]:
    ip = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with ExitStack() as stack:
        socks = [stack.enter_context(udp(family, ip)) for _ in range(4)]
        plane = Plane(FastPath(seed=7, **kwargs), socks[0], socks[1], socks[2], socks[3], stack)
        if add:
            plane.add()
        yield plane


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def plane(request: pytest.FixtureRequest) -> Iterator[Plane]:
    with rig(request.param) as p:
        yield p


def channel_data(number: int, payload: bytes, pad: int = 0) -> bytes:
    return number.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload + bytes(pad)


def send_indication(
    peer: Address,
    payload: bytes,
    *,
    extra: tuple[tuple[int, bytes], ...] = (),
    fingerprint: bool = False,
) -> bytes:
    attrs: list[tuple[int, bytes]] = [
        (AttrType.XOR_PEER_ADDRESS, encode_xor_address(*peer, TID)),
        (AttrType.DATA, payload),
        *extra,
    ]
    return encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs, fingerprint=fingerprint)


# -- client -> peer -------------------------------------------------------------------------


def test_channel_data_to_the_peer(plane: Plane) -> None:
    plane.open_path()
    before = plane.fp.counters()
    # RFC 8656 §12.4: padding over UDP is allowed and not relayed
    assert plane.from_client(NOW, channel_data(CHANNEL, b"hello", pad=3)) == []
    assert receive(plane.peer) == (b"hello", address(plane.relay))
    assert changes(plane.fp, before) == {"to_peer_packets": 1, "to_peer_bytes": 5}


def test_channel_data_drop_reasons_in_their_order(plane: Plane) -> None:
    plane.open_path()
    fd, stranger = plane.relay.fileno(), plane.extra_socket()
    cases = [
        (channel_data(CHANNEL, b"x")[:3], "dropped_malformed"),  # shorter than 4 bytes
        (channel_data(CHANNEL, b"abc")[:6], "dropped_malformed"),  # length beyond the datagram
        (channel_data(0x4002, b"abc"), "dropped_bad_channel"),  # not bound
    ]
    for data, reason in cases:
        before = plane.fp.counters()
        assert plane.from_client(NOW, data) == []
        assert changes(plane.fp, before) == {reason: 1}
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"abc"), sender=stranger)
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1}
    # a channel whose permission is gone: the channel check passes, the permission's does not
    plane.fp.forget_permission(fd, plane.peer_addr[0])
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"abc"))
    assert changes(plane.fp, before) == {"dropped_no_permission": 1}
    assert_silent(plane.peer)


def test_expiry_is_by_now(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path(expires=NOW + 10)
    before = plane.fp.counters()
    plane.from_client(NOW + 9.5, channel_data(CHANNEL, b"a"))
    assert receive(plane.peer)[0] == b"a"
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"b"))  # expires <= now: expired
    plane.fp.bind_channel(fd, CHANNEL, plane.peer_addr, NOW + 100)  # refreshed channel only
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"c"))
    plane.fp.permit(fd, plane.peer_addr[0], NOW + 100, ())
    plane.from_client(NOW + 10, channel_data(CHANNEL, b"d"))
    assert receive(plane.peer)[0] == b"d"
    assert changes(plane.fp, before) == {
        "to_peer_packets": 2,
        "to_peer_bytes": 2,
        "dropped_bad_channel": 1,
        "dropped_no_permission": 1,
    }
    plane.fp.forget_channel(fd, CHANNEL)
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, b"e"))
    assert changes(plane.fp, before) == {"dropped_bad_channel": 1}


def test_send_indication_in_the_plain_shape(plane: Plane) -> None:
    plane.open_path(channel=False)
    dont_fragment = ((AttrType.DONT_FRAGMENT, b""),)
    sends = [
        send_indication(plane.peer_addr, b"one"),
        send_indication(plane.peer_addr, b"two", fingerprint=True),  # coturn's clients
        send_indication(plane.peer_addr, b"three", extra=dont_fragment),
        # RFC 8489 §14: only the first occurrence counts
        send_indication(plane.peer_addr, b"four", extra=((AttrType.DATA, b"not this"),)),
    ]
    before = plane.fp.counters()
    assert plane.from_client(NOW, *sends) == []
    assert [receive(plane.peer)[0] for _ in sends] == [b"one", b"two", b"three", b"four"]
    assert changes(plane.fp, before) == {"to_peer_packets": 4, "to_peer_bytes": 15}


def test_other_send_indications_go_to_python(plane: Plane) -> None:
    plane.open_path(channel=False)
    good = send_indication(plane.peer_addr, b"data", fingerprint=True)
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    plain = send_indication(plane.peer_addr, b"data")
    others = [
        bad_fingerprint,
        send_indication(plane.peer_addr, b"data", extra=((AttrType.SOFTWARE, b"x"),)),
        encode_message(Method.SEND, MessageClass.INDICATION, TID, [(AttrType.DATA, b"x")]),
        good[:-8],  # the header's length no longer matches
        good[:2] + (len(good) - 20).to_bytes(2, "big") + b"\0\0\0\0" + good[8:],  # no cookie
        # an attribute longer than the message
        plain[:2] + (len(plain) - 16).to_bytes(2, "big") + plain[4:] + b"\x00\x1a\x00\x08",
    ]
    assert split_send_indication_untrusted(good) is not None
    assert all(split_send_indication_untrusted(data) is None for data in others)
    before = plane.fp.counters()
    returned = plane.from_client(NOW, *others)
    assert returned == [(data, plane.client_addr) for data in others]
    assert changes(plane.fp, before) == {}
    # a plain Send from a client without an allocation: the core counts it
    stranger = plane.extra_socket()
    returned = plane.from_client(NOW, good, sender=stranger)
    assert returned == [(good, address(stranger))]
    assert_silent(plane.peer)


def test_send_indication_drop_reasons(plane: Plane) -> None:
    fd, peer = plane.relay.fileno(), plane.peer_addr
    plane.fp.permit(fd, peer[0], NOW + 60, (peer[1] + 1,))
    head = encode_xor_address(*peer, TID)

    def send(value: bytes) -> bytes:
        attrs = [(AttrType.XOR_PEER_ADDRESS, value), (AttrType.DATA, b"payload")]
        return encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs)

    other_ip = "127.0.0.2" if plane.listener.family == socket.AF_INET else "::2"
    cases = [
        (send(head[:1] + b"\x03" + head[2:]), "dropped_malformed"),  # family 3
        (send(head + b"\0\0\0\0"), "dropped_malformed"),  # a length neither 8 nor 20
        (send(bytes(4)), "dropped_malformed"),
        (send(encode_xor_address(other_ip, peer[1], TID)), "dropped_no_permission"),
        (send(encode_xor_address(peer[0], peer[1] + 1, TID)), "dropped_own_port"),
    ]
    for data, reason in cases:
        before = plane.fp.counters()
        assert plane.from_client(NOW, data) == []
        assert changes(plane.fp, before) == {reason: 1}, reason
    before = plane.fp.counters()
    plane.from_client(NOW + 60, send(head))  # the permission has expired
    assert changes(plane.fp, before) == {"dropped_no_permission": 1}
    assert_silent(plane.peer)
    plane.from_client(NOW, send(head))
    assert receive(plane.peer)[0] == b"payload"


def test_xor_peer_address_decoding_matches_python() -> None:
    """Both families' XOR encodings (the IPv6 one uses the transaction id), and the reserved
    first byte ignored, as ``decode_xor_address_untrusted`` does."""
    with rig() as plane, rig(socket.AF_INET6) as plane6:
        for p in (plane, plane6):
            fd, peer = p.relay.fileno(), p.peer_addr
            p.fp.permit(fd, peer[0], NOW + 60, ())
            value = bytearray(encode_xor_address(*peer, TID))
            value[0] = 0xFF
            assert decode_xor_address_untrusted(bytes(value), TID) == peer
            attrs = [(AttrType.XOR_PEER_ADDRESS, bytes(value)), (AttrType.DATA, b"z")]
            p.from_client(NOW, encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs))
            assert receive(p.peer) == (b"z", address(p.relay))


# -- peer -> client -------------------------------------------------------------------------


def test_channel_data_to_the_client(plane: Plane) -> None:
    plane.open_path()
    before = plane.fp.counters()
    plane.from_peer(NOW, b"hello")
    data, source = receive(plane.client)
    assert source == address(plane.listener)
    # RFC 8656 §12.5: no padding over UDP
    assert data == CHANNEL.to_bytes(2, "big") + b"\x00\x05hello"
    assert changes(plane.fp, before) == {"to_client_packets": 1, "to_client_bytes": 5}


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000])
def test_data_indication(plane: Plane, size: int) -> None:
    plane.open_path(channel=False)
    payload = os.urandom(size)
    plane.from_peer(NOW, payload)
    data, source = receive(plane.client)
    assert source == address(plane.listener)
    msg = decode_message_untrusted(data)
    assert (msg.method, msg.cls) == (Method.DATA, MessageClass.INDICATION)
    tid = msg.transaction_id
    assert decode_xor_address_untrusted(msg.get(AttrType.XOR_PEER_ADDRESS) or b"", tid) == (
        plane.peer_addr
    )
    assert msg.get(AttrType.DATA) == payload
    assert not msg.has_fingerprint
    # byte for byte relaypath._data_indication's layout: XOR-PEER-ADDRESS, DATA padded to 4
    xor_peer = encode_xor_address(*plane.peer_addr, tid)
    pad = bytes(-size & 3)
    body = b"\x00\x12" + len(xor_peer).to_bytes(2, "big") + xor_peer
    body += b"\x00\x13" + size.to_bytes(2, "big") + payload + pad
    assert data == b"\x00\x17" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + tid + body


def test_data_indication_when_the_channel_is_for_another_peer_or_expired(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path(expires=NOW + 300)
    plane.fp.bind_channel(fd, CHANNEL, (plane.peer_addr[0], 9), NOW + 300)
    plane.from_peer(NOW, b"a")
    assert receive(plane.client)[0][:2] == b"\x00\x17"
    plane.fp.bind_channel(fd, CHANNEL, plane.peer_addr, NOW + 5)
    plane.from_peer(NOW + 5, b"b")  # expired
    assert receive(plane.client)[0][:2] == b"\x00\x17"
    plane.from_peer(NOW + 4, b"c")
    assert receive(plane.client)[0] == CHANNEL.to_bytes(2, "big") + b"\x00\x01c"


def test_transaction_ids_are_random_and_seeded() -> None:
    ids = []
    for _ in range(2):
        with rig() as plane:
            plane.open_path(channel=False)
            plane.from_peer(NOW, b"1", b"2")
            ids.append([receive(plane.client)[0][8:20] for _ in range(2)])
    assert ids[0] == ids[1]  # the same seed
    assert ids[0][0] != ids[0][1]
    assert FastPath().counters() == FastPath(seed=1).counters()  # unseeded: getrandom


def test_peer_drop_reasons(plane: Plane) -> None:
    fd = plane.relay.fileno()
    stranger = plane.extra_socket()
    before = plane.fp.counters()
    plane.from_peer(NOW, b"x", sender=stranger)  # no permission at all
    plane.open_path(expires=NOW + 10)
    plane.from_peer(NOW + 10, b"x")  # expired
    assert changes(plane.fp, before) == {"dropped_no_permission": 2}
    # larger than 0xFFFC - 28 bytes: fits no Data indication (an IPv4 datagram can be 65507)
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(0xFFFC - 28 + 1))
    assert changes(plane.fp, before) == {"dropped_malformed": 1}
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(0xFFFC - 28))
    if plane.listener.family == socket.AF_INET6:
        assert len(receive(plane.client)[0]) == 4 + 0xFFFC - 28
    else:  # 4 + 65504 bytes is more than an IPv4 datagram holds: the send fails, counted
        assert changes(plane.fp, before) == {"send_errors": 1}
    plane.fp.set_budget(fd, 10)
    before = plane.fp.counters()
    plane.from_peer(NOW, bytes(6), bytes(6), bytes(4))
    assert changes(plane.fp, before) == {
        "to_client_packets": 2,
        "to_client_bytes": 10,
        "dropped_bandwidth": 1,
    }
    assert plane.fp.budget(fd) == 0
    assert_silent(stranger)


# -- budgets --------------------------------------------------------------------------------


def test_budget_spend_and_refill(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path()
    plane.fp.set_budget(fd, 100)
    before = plane.fp.counters()
    plane.from_client(NOW, channel_data(CHANNEL, bytes(60)), channel_data(CHANNEL, bytes(60)))
    assert changes(plane.fp, before) == {
        "to_peer_packets": 1,
        "to_peer_bytes": 60,
        "dropped_bandwidth": 1,
    }
    assert plane.fp.budget(fd) == 40
    # the core's own Send path spends through spend(), and counts what it relays itself
    before = plane.fp.counters()
    assert plane.fp.spend(fd, 40)
    assert not plane.fp.spend(fd, 1)
    assert changes(plane.fp, before) == {"dropped_bandwidth": 1}
    plane.fp.set_budget(fd, 60)  # the core's tick refills it
    plane.from_client(NOW, channel_data(CHANNEL, bytes(60)))
    assert plane.fp.budget(fd) == 0
    plane.fp.set_budget(fd, INF)
    assert plane.fp.spend(fd, 10**9)
    assert plane.fp.budget(fd) == INF
    with pytest.raises(ValueError, match="size"):
        plane.fp.spend(fd, -1)


# -- what goes back to Python ---------------------------------------------------------------


def test_stun_and_everything_else_goes_back_to_python(plane: Plane) -> None:
    binding = encode_message(Method.BINDING, MessageClass.REQUEST, TID)
    others = [binding, b"", b"\x00", b"\xff" * 30, send_indication(plane.peer_addr, b"")[:2]]
    before = plane.fp.counters()
    assert plane.from_client(NOW, *others) == [(d, plane.client_addr) for d in others]
    assert changes(plane.fp, before) == {}
    stranger = plane.extra_socket()  # no allocation: the same
    assert plane.from_client(NOW, binding, sender=stranger) == [(binding, address(stranger))]


def test_a_removed_allocation_is_no_longer_relayed(plane: Plane) -> None:
    fd = plane.relay.fileno()
    plane.open_path()
    plane.fp.remove(fd)
    plane.fp.remove(fd)  # no error if absent
    before = plane.fp.counters()
    send = send_indication(plane.peer_addr, b"x")
    assert plane.from_client(NOW, channel_data(CHANNEL, b"x"), send) == [(send, plane.client_addr)]
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1}
    plane.peer.sendto(b"x", address(plane.relay))
    assert plane.fp.drain_relay(fd, NOW, 10) == 0  # not read
    assert select.select([plane.relay], [], [], 2)[0]
    plane.add()  # the same client may allocate again
    plane.from_client(NOW, channel_data(CHANNEL, b"x"))
    assert changes(plane.fp, before) == {"dropped_no_allocation": 1, "dropped_bad_channel": 1}
    assert_silent(plane.peer)


# -- batches, runs per socket, failures -----------------------------------------------------


def test_batches_and_limits() -> None:
    with rig(batch=4) as plane:
        plane.open_path()
        data = [channel_data(CHANNEL, bytes([i])) for i in range(10)]
        for d in data:
            plane.client.sendto(d, address(plane.listener))
        select.select([plane.listener], [], [], 2)
        assert plane.fp.drain_listener(plane.listener.fileno(), NOW, 3) == []
        assert [receive(plane.peer)[0] for _ in range(3)] == [b"\0", b"\1", b"\2"]
        assert_silent(plane.peer)
        drain_listener(plane.fp, plane.listener.fileno(), NOW, 7)
        assert [receive(plane.peer)[0] for _ in range(7)] == [bytes([i]) for i in range(3, 10)]
        assert plane.fp.drain_listener(plane.listener.fileno(), NOW, 0) == []
        for i in range(6):
            plane.peer.sendto(bytes([i]), address(plane.relay))
        select.select([plane.relay], [], [], 2)
        assert plane.fp.drain_relay(plane.relay.fileno(), NOW, 5) == 5
        assert plane.fp.drain_relay(plane.relay.fileno(), NOW, 5) == 1
        assert plane.fp.drain_relay(plane.relay.fileno(), NOW, 5) == 0
        assert [receive(plane.client)[0][4:] for _ in range(6)] == [bytes([i]) for i in range(6)]


def test_many_allocations_on_one_listener() -> None:
    with rig() as a:
        b_relay, b_client, b_peer = a.extra_socket(), a.extra_socket(), a.extra_socket()
        a.open_path()
        fd = b_relay.fileno()
        a.fp.add(fd, a.listener.fileno(), address(b_client), INF)
        a.fp.permit(fd, "127.0.0.1", NOW + 60, ())
        a.fp.bind_channel(fd, CHANNEL, address(b_peer), NOW + 60)
        for i in range(8):  # interleaved: runs of one relay socket each
            (a.client if i % 3 else b_client).sendto(
                channel_data(CHANNEL, bytes([i])), address(a.listener)
            )
        drain_listener(a.fp, a.listener.fileno(), NOW, 8)
        assert [receive(a.peer) for _ in range(5)] == [
            (bytes([i]), address(a.relay)) for i in (1, 2, 4, 5, 7)
        ]
        assert [receive(b_peer) for _ in range(3)] == [
            (bytes([i]), address(b_relay)) for i in (0, 3, 6)
        ]


def test_failed_sends(plane: Plane) -> None:
    """A failed send counts send_errors; to-peer counters stay, to-client counters are taken
    back (udpplane); one failing datagram does not stop the rest of its batch."""
    fd = plane.relay.fileno()
    plane.open_path()
    plane.fp.bind_channel(fd, 0x4002, (plane.peer_addr[0], 0), NOW + 60)  # port 0: EINVAL
    other_family = ("::1", 9) if plane.listener.family == socket.AF_INET else ("127.0.0.1", 9)
    plane.fp.bind_channel(fd, 0x4003, other_family, NOW + 60)
    plane.fp.permit(fd, other_family[0], NOW + 60, ())
    before = plane.fp.counters()
    plane.from_client(
        NOW,
        channel_data(0x4002, b"a"),
        channel_data(CHANNEL, b"b"),
        channel_data(0x4003, b"c"),
        channel_data(CHANNEL, b"d"),
    )
    assert [receive(plane.peer)[0] for _ in range(2)] == [b"b", b"d"]
    assert changes(plane.fp, before) == {
        "to_peer_packets": 4,
        "to_peer_bytes": 4,
        "send_errors": 2,
    }
    with rig(plane.listener.family, add=False) as other:
        other.fp.add(other.relay.fileno(), other.listener.fileno(), (other.ip, 0), INF)
        other.open_path()
        other.from_peer(NOW, b"lost", b"lost too")
        assert changes(other.fp, {k: 0 for k in other.fp.counters()}) == {"send_errors": 2}


def test_gone_descriptors_end_the_drains() -> None:
    with rig() as plane:
        plane.open_path()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        fd = sock.fileno()
        sock.close()
        assert plane.fp.drain_listener(fd, NOW, 1000) == []
        plane.fp.add(fd, plane.listener.fileno(), ("127.0.0.9", 1), INF)
        assert plane.fp.drain_relay(fd, NOW, 1000) == 0
        assert plane.fp.drain_listener(-1, NOW, 1000) == []


def test_truncated_datagrams_are_malformed() -> None:
    with rig(buffer_size=64) as plane:
        plane.open_path()
        before = plane.fp.counters()
        big = channel_data(CHANNEL, bytes(100))
        assert plane.from_client(NOW, big, encode_message(1, 0, TID, [(0x8022, bytes(80))])) == []
        plane.from_peer(NOW, bytes(65))
        assert changes(plane.fp, before) == {"dropped_malformed": 3}
        plane.from_client(NOW, channel_data(CHANNEL, bytes(60)))  # exactly 64 bytes
        assert receive(plane.peer)[0] == bytes(60)


# -- the tables' API ------------------------------------------------------------------------


def test_table_errors() -> None:
    with rig() as plane:
        fp, fd, lfd = plane.fp, plane.relay.fileno(), plane.listener.fileno()
        with pytest.raises(ValueError, match="already"):
            fp.add(fd, lfd, ("127.0.0.1", 1), INF)
        fp.add(fd + 1000, lfd + 1, plane.client_addr, INF)  # another listener: another key
        for call in (
            lambda: fp.permit(99999, "127.0.0.1", NOW, ()),
            lambda: fp.bind_channel(99999, CHANNEL, ("127.0.0.1", 1), NOW),
            lambda: fp.budget(99999),
            lambda: fp.set_budget(99999, 1.0),
            lambda: fp.spend(99999, 1),
        ):
            with pytest.raises(KeyError):
                call()
        for bad in ("1.2.3", "::g", "localhost", "127.0.0.1%lo", "", "1.2.3.4\0"):
            with pytest.raises(ValueError, match="address"):
                fp.permit(fd, bad, NOW, ())
            with pytest.raises(ValueError, match="address"):
                fp.bind_channel(fd, CHANNEL, (bad, 1), NOW)
        for address_ in (("127.0.0.1", 65536), ("127.0.0.1", -1), ("127.0.0.1",), ["::1", 1]):
            with pytest.raises(ValueError, match=r"port|tuple"):
                fp.add(5000, lfd, address_, INF)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="port"):
            fp.permit(fd, "127.0.0.1", NOW, (70000,))
        with pytest.raises(ValueError, match="16 bits"):
            fp.bind_channel(fd, 0x10000, ("127.0.0.1", 1), NOW)
        with pytest.raises(ValueError, match=">= 0"):
            fp.add(-1, lfd, ("127.0.0.1", 1), INF)
        for bad_batch in (0, 1025):
            with pytest.raises(ValueError, match="batch"):
                FastPath(bad_batch)
        with pytest.raises(ValueError, match="buffer_size"):
            FastPath(buffer_size=65537)
        fp.forget_permission(99999, "127.0.0.1")
        fp.forget_permission(fd, "127.0.0.9")
        fp.forget_channel(99999, CHANNEL)
        fp.forget_channel(fd, 0x4FFF)
        fp.add(70000, lfd, ("10.0.0.1", 1), 5)  # the fd table grows
        assert fp.budget(70000) == 5.0
        fp.remove(70000)


def test_refresh_replaces() -> None:
    with rig() as plane:
        fd, peer = plane.relay.fileno(), plane.peer_addr
        plane.fp.permit(fd, peer[0], NOW + 60, (peer[1],))
        plane.fp.permit(fd, peer[0], NOW + 60, [])  # refreshed: own ports replaced
        plane.fp.bind_channel(fd, CHANNEL, ("127.0.0.1", 9), NOW + 60)
        plane.fp.bind_channel(fd, CHANNEL, peer, NOW + 60)  # refreshed: the new peer
        for i in range(20):  # more permissions than the first allocation holds
            plane.fp.permit(fd, f"127.0.1.{i}", NOW + 60, (1, 2, 3))
            plane.fp.bind_channel(fd, 0x4100 + i, (f"127.0.1.{i}", 5), NOW + 60)
        for i in range(0, 20, 2):
            plane.fp.forget_permission(fd, f"127.0.1.{i}")
            plane.fp.forget_channel(fd, 0x4100 + i)
        plane.from_client(NOW, channel_data(CHANNEL, b"1"), send_indication(peer, b"2"))
        assert [receive(plane.peer)[0] for _ in range(2)] == [b"1", b"2"]


def test_memory_is_freed() -> None:
    """Every allocation goes through PyMem, which tracemalloc sees: tables, replaced own ports
    and the buffers all come back."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            fp = FastPath(8)
            for fd in range(200):
                fp.add(fd, 1000, ("10.0.0.1", fd), INF)
                for i in range(6):
                    fp.permit(fd, f"10.1.0.{i}", NOW, (1, 2, i))
                    fp.permit(fd, f"10.1.0.{i}", NOW, (3,))
                    fp.bind_channel(fd, 0x4000 + i, (f"10.1.0.{i}", 9), NOW)
                fp.forget_permission(fd, "10.1.0.3")
                fp.forget_channel(fd, 0x4003)
            for fd in range(0, 200, 2):
                fp.remove(fd)
            assert tracemalloc.get_traced_memory()[0] - start > 8 * 65536  # it is seen
            del fp
        assert tracemalloc.get_traced_memory()[0] - start < 4096
    finally:
        tracemalloc.stop()


def test_compiles_without_warnings(tmp_path: Path) -> None:
    """The quality bar: -Wall -Wextra -Werror (not in the build flags, where a newer
    compiler's new warning would silently drop the extension from an install), over every
    source the build compiles (pyproject.toml's ext-modules entry), which are all the C files
    of the package's turn/."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    (extension,) = (e for e in setuptools["ext-modules"] if e["name"].endswith("._fastpath"))
    sources = sorted(ROOT / source for source in extension["sources"])
    assert sources == sorted((ROOT / "src" / "secureconnect" / "turn").glob("*.c"))
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "no C compiler"
    include = sysconfig.get_paths()["include"]
    command = [cc, "-c", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", f"-I{include}"]
    result = subprocess.run(
        [*command, *map(str, sources)],  # each X.c to tmp_path/X.o
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.glob("*.o")) == sorted(
        f"{source.stem}.o" for source in sources
    )


# -- random bytes ---------------------------------------------------------------------------

PERMITTED = ("127.0.0.1", 40000)
OWN_PORT = 40001


def xor_peer_values() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(
            [
                encode_xor_address(*PERMITTED, TID),
                encode_xor_address(PERMITTED[0], OWN_PORT, TID),
                encode_xor_address("127.0.0.2", 1, TID),
                encode_xor_address("::1", 1, TID),
            ]
        ),
        st.binary(max_size=24),
        st.tuples(st.binary(min_size=1, max_size=1), st.sampled_from([1, 2, 3]), st.binary()).map(
            lambda t: t[0] + bytes([t[1]]) + t[2][:18]
        ),
    )


@st.composite
def send_indications(draw: st.DrawFn) -> bytes:
    choices = st.one_of(
        st.tuples(st.just(int(AttrType.XOR_PEER_ADDRESS)), xor_peer_values()),
        st.tuples(st.just(int(AttrType.DATA)), st.binary(max_size=40)),
        st.tuples(st.just(int(AttrType.DONT_FRAGMENT)), st.binary(max_size=1)),
        st.tuples(st.sampled_from([0x8022, 0x0006, 0x8028]), st.binary(max_size=8)),
    )
    attrs = draw(st.lists(choices, max_size=5))
    data = encode_message(
        Method.SEND, MessageClass.INDICATION, TID, attrs, fingerprint=draw(st.booleans())
    )
    if draw(st.booleans()):  # corrupt a byte
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def channel_datas() -> st.SearchStrategy[bytes]:
    return st.tuples(
        st.sampled_from([CHANNEL, 0x4002, 0x7FFF]), st.integers(0, 60), st.binary(max_size=50)
    ).map(lambda t: t[0].to_bytes(2, "big") + t[1].to_bytes(2, "big") + t[2])


def expected(data: bytes) -> str:
    """What relaypath and core._relay_send would do with ``data`` from the allocated client
    (a channel CHANNEL to PERMITTED, a permission for its IP with OWN_PORT, no budget cap)."""
    if data and data[0] >> 6 == 1:
        length = int.from_bytes(data[2:4], "big")
        if len(data) < 4 or length > len(data) - 4:
            return "dropped_malformed"
        return "to_peer" if data[:2] == CHANNEL.to_bytes(2, "big") else "dropped_bad_channel"
    parts = split_send_indication_untrusted(data) if data[:2] == b"\x00\x16" else None
    if parts is None:
        return "python"
    try:
        ip, port = decode_xor_address_untrusted(parts[0], data[8:20])
    except StunDecodeError:
        return "dropped_malformed"
    if ip != PERMITTED[0]:
        return "dropped_no_permission"
    return "dropped_own_port" if port == OWN_PORT else "to_peer"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=80), channel_datas(), send_indications()), max_size=12)
)
def test_random_client_datagrams(datagrams: list[bytes]) -> None:
    with rig() as plane:
        fd = plane.relay.fileno()
        plane.fp.permit(fd, PERMITTED[0], NOW + 60, (OWN_PORT,))
        plane.fp.bind_channel(fd, CHANNEL, PERMITTED, NOW + 60)
        outcomes = [expected(d) for d in datagrams]
        returned = plane.from_client(NOW, *datagrams)
        assert returned == [
            (d, plane.client_addr)
            for d, o in zip(datagrams, outcomes, strict=True)
            if o == "python"
        ]
        counters = plane.fp.counters()
        for reason in DROPS:
            assert counters[reason] == outcomes.count(reason), reason
        assert counters["to_peer_packets"] == outcomes.count("to_peer")
        assert counters["send_errors"] == 0


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=12))
def test_random_peer_datagrams(channel: bool, datagrams: list[tuple[bool, bytes]]) -> None:
    with rig() as plane:
        fd = plane.relay.fileno()
        stranger = plane.stack.enter_context(udp(socket.AF_INET, "127.0.0.2"))  # another IP
        plane.open_path(channel=channel)
        plane.fp.set_budget(fd, 1000)
        for permitted, data in datagrams:
            (plane.peer if permitted else stranger).sendto(data, address(plane.relay))
        drain_relay(plane.fp, fd, NOW, len(datagrams))
        budget, relayed = 1000.0, []
        for permitted, data in datagrams:
            if permitted and budget - len(data) >= 0:
                budget -= len(data)
                relayed.append(data)
        for data in relayed:
            out = receive(plane.client)[0]
            if channel:
                assert out == CHANNEL.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
            else:
                assert decode_message_untrusted(out).get(AttrType.DATA) == data
        assert_silent(plane.client)
        permitted_count = sum(p for p, _ in datagrams)
        assert changes(plane.fp, dict.fromkeys(plane.fp.counters(), 0)) == {
            k: v
            for k, v in {
                "to_client_packets": len(relayed),
                "to_client_bytes": sum(map(len, relayed)),
                "dropped_no_permission": len(datagrams) - permitted_count,
                "dropped_bandwidth": permitted_count - len(relayed),
            }.items()
            if v
        }
        assert plane.fp.budget(fd) == budget


def test_ipv4_mapped_peers_on_an_ipv4_relay() -> None:
    """Python's sendto takes "::ffff:a.b.c.d" for an IPv4 socket (getaddrinfo maps it), and so
    does the fast path. In XOR-PEER-ADDRESS the mapped address is IPv6 (family 0x02, 20 bytes);
    encode_xor_address writes it as IPv4, which a permission for the mapped text does not
    cover (the core decides the same)."""
    with rig() as plane:
        fd, (ip, port) = plane.relay.fileno(), plane.peer_addr
        mapped = f"::ffff:{ip}"
        plane.fp.permit(fd, mapped, NOW + 60, ())
        plane.fp.bind_channel(fd, CHANNEL, (mapped, port), NOW + 60)
        pad = int.from_bytes(b"\x21\x12\xa4\x42" + TID, "big")
        address_ = int.from_bytes(socket.inet_pton(socket.AF_INET6, mapped), "big") ^ pad
        as_ipv6 = b"\x00\x02" + (port ^ 0x2112).to_bytes(2, "big") + address_.to_bytes(16, "big")
        decoded_ip, decoded_port = decode_xor_address_untrusted(as_ipv6, TID)
        # the same address ("::ffff:7f00:1" where ipaddress spells it so): tables compare binary
        assert socket.inet_pton(socket.AF_INET6, decoded_ip) == socket.inet_pton(
            socket.AF_INET6, mapped
        )
        assert decoded_port == port
        attrs = [(AttrType.XOR_PEER_ADDRESS, as_ipv6), (AttrType.DATA, b"2")]
        send = encode_message(Method.SEND, MessageClass.INDICATION, TID, attrs)
        before = plane.fp.counters()
        plane.from_client(
            NOW, channel_data(CHANNEL, b"1"), send, send_indication((mapped, port), b"3")
        )
        assert [receive(plane.peer)[0] for _ in range(2)] == [b"1", b"2"]
        assert changes(plane.fp, before) == {
            "to_peer_packets": 2,
            "to_peer_bytes": 2,
            "dropped_no_permission": 1,
        }


def test_tables_have_the_semantics_of_python_dicts() -> None:
    """Where the core would never go, the tables still do what relaypath's dicts do, so that
    the differential test can drive both with any sequence: a client's key names the last
    allocation added for it and remove() pops it; channel_by_peer names the last channel bound
    to a peer, and forgetting a channel pops its peer's key; a permission that is not there is
    one that expired at 0.0 (``permissions.get(ip, 0.0) <= now``)."""
    with rig() as plane:
        fd, lfd, peer = plane.relay.fileno(), plane.listener.fileno(), plane.peer_addr
        second = plane.extra_socket()
        plane.open_path()
        plane.fp.add(second.fileno(), lfd, plane.client_addr, INF)  # the key moves
        before = plane.fp.counters()
        plane.from_client(NOW, channel_data(CHANNEL, b"x"))
        assert changes(plane.fp, before) == {"dropped_bad_channel": 1}  # the new one's tables
        plane.fp.remove(fd)  # pops the key, which named the second allocation
        plane.from_client(NOW, channel_data(CHANNEL, b"x"))
        assert changes(plane.fp, before) == {"dropped_bad_channel": 1, "dropped_no_allocation": 1}
    with rig() as plane:
        fd, peer = plane.relay.fileno(), plane.peer_addr
        plane.open_path()
        plane.fp.bind_channel(fd, 0x4002, peer, NOW + 60)  # the same peer: the last one wins
        plane.from_peer(NOW, b"a")
        assert receive(plane.client)[0][:2] == b"\x40\x02"
        plane.fp.forget_channel(fd, 0x4002)  # pops the peer: no channel names it any more
        plane.from_peer(NOW, b"b")
        assert receive(plane.client)[0][:2] == b"\x00\x17"
        plane.from_client(NOW, channel_data(CHANNEL, b"c"))  # but CHANNEL is still bound
        assert receive(plane.peer)[0] == b"c"
        plane.fp.bind_channel(fd, CHANNEL, peer, NOW + 60)  # a refresh does not re-key it
        plane.from_peer(NOW, b"d")
        assert receive(plane.client)[0][:2] == b"\x00\x17"
        plane.fp.bind_channel(fd, CHANNEL, (peer[0], 9), NOW + 60)  # rebound elsewhere ...
        plane.fp.bind_channel(fd, CHANNEL, peer, NOW + 60)  # ... and back: keyed again
        plane.from_peer(NOW, b"e")
        assert receive(plane.client)[0] == b"\x40\x01\x00\x01e"
        plane.fp.forget_permission(fd, peer[0])
        plane.from_peer(-1.0, b"f")  # a clock before 0.0: Python's default lets it through
        assert receive(plane.client)[0] == b"\x40\x01\x00\x01f"
