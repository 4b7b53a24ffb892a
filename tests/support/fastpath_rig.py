"""The rig of the compiled fast path's own tests (``tests/turn/test_fastpath_compiled*.py``):
real non-blocking loopback sockets around one ``secureconnect.turn._fastpath.FastPath``, and the
datagrams they send.

Importing this without the extension fails, unless SECURECONNECT_NO_EXTENSIONS says to do without
it (then the importing test module is skipped, with that reason).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    encode_message,
    encode_xor_address,
)

try:
    from secureconnect.turn._fastpath import FastPath
except ImportError as exc:  # pragma: no cover - depends on the install
    # (with SECURECONNECT_NO_EXTENSIONS set and no extension, tests/turn/conftest.py leaves
    # this module's users out)
    raise ImportError(
        "secureconnect.turn._fastpath is not built: `pip install -e .` needs a C compiler and "
        "the Python headers (scripts/install-system-deps.sh), or set SECURECONNECT_NO_EXTENSIONS"
    ) from exc

__all__ = [
    "CHANNEL",
    "DROPS",
    "INF",
    "NOW",
    "ROOT",
    "TID",
    "Address",
    "FastPath",
    "Plane",
    "accounted",
    "address",
    "assert_silent",
    "changes",
    "channel_data",
    "drain_listener",
    "drain_relay",
    "receive",
    "rig",
    "send_indication",
    "udp",
]

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
