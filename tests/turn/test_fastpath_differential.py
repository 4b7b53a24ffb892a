"""The compiled UDP fast path and its pure-Python twin, held to the same behaviour (issue #14).

Hypothesis generates sequences of table operations (the pushes an allocation makes) and
datagrams (ChannelData, Send indications in and out of the plain shape, STUN requests, garbage,
peer datagrams of every size), plays each sequence on two rigs of real loopback sockets - one per
implementation - and requires the same observations after every step: what every client and peer
socket received (Data indications compared decoded: their transaction ids are random), what was
handed back to Python, the counters, and each allocation's own traffic counters. Addresses are
symbolic, since the rigs' ports differ.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secureconnect.netaddr import Address
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
from secureconnect.turn.fastpath import ACTIVE, REASON, FastPathAPI, new_fastpath

A = AttrType
CLIENTS = ("c0", "c1", "c2")  # c2 never allocates
PEERS = ("p0", "p1", "p2")  # p2 listens on 127.0.0.2: another IP
RELAYS = ("r0", "r1")
LIMIT = 64

if (
    ACTIVE != "compiled"
):  # with SECURECONNECT_NO_EXTENSIONS set, tests/turn/conftest.py leaves us out
    raise RuntimeError(f"the compiled fast path is missing ({REASON}); `make test` builds it")


def _udp(ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


@dataclass
class Rig:
    """One implementation with its own sockets: a listening socket, clients, peers, relays."""

    compiled: bool
    listener: socket.socket = field(default_factory=_udp)
    clients: dict[str, socket.socket] = field(default_factory=dict)
    peers: dict[str, socket.socket] = field(default_factory=dict)
    relays: dict[str, socket.socket] = field(default_factory=dict)
    fastpath: FastPathAPI | None = None

    def __post_init__(self) -> None:
        self.clients = {name: _udp() for name in CLIENTS}
        self.peers = {name: _udp("127.0.0.2" if name == "p2" else "127.0.0.1") for name in PEERS}
        self.relays = {name: _udp() for name in RELAYS}

    def reset(self) -> None:
        """A fresh fast path, every socket drained."""
        self.observe()
        sockets = {self.listener.fileno(): self.listener}
        sockets.update({sock.fileno(): sock for sock in self.relays.values()})
        self.fastpath = new_fastpath(sockets, compiled=self.compiled)

    @property
    def fp(self) -> FastPathAPI:
        assert self.fastpath is not None
        return self.fastpath

    def address(self, name: str) -> Address:
        every = {**self.clients, **self.peers, **self.relays, "listener": self.listener}
        ip, port = every[name].getsockname()
        return ip, port

    def name_of(self, address: object) -> str:
        for name in (*CLIENTS, *PEERS, *RELAYS, "listener"):
            if self.address(name) == address:
                return name
        return repr(address)

    def observe(self) -> list[tuple[str, str, object]]:
        """Everything every client and peer socket has received, in symbolic form."""
        seen: list[tuple[str, str, object]] = []
        for name, sock in [*self.clients.items(), *self.peers.items(), *self.relays.items()]:
            while True:
                try:
                    data, source = sock.recvfrom(70000)
                except BlockingIOError:
                    break
                seen.append((name, self.name_of(source), self.describe(data)))
        return seen

    def describe(self, data: bytes) -> object:
        """A Data or Send indication as (kind, size, peer, data), its peer address named
        (the rigs' ports differ); anything else as its bytes."""
        if data[:2] in (b"\x00\x16", b"\x00\x17"):
            try:
                msg = decode_message_untrusted(data)
                peer = decode_xor_address_untrusted(
                    msg.get(A.XOR_PEER_ADDRESS) or b"", msg.transaction_id
                )
            except StunDecodeError:  # e.g. a damaged FINGERPRINT: its bytes differ per rig
                return (data[:2], len(data), "undecodable")
            return (data[:2], len(data), self.name_of(peer), msg.get(A.DATA))
        return data


# -- operations --------------------------------------------------------------------------------

budgets = st.sampled_from([math.inf, 0.0, 50.0, 120.5, 1000.0])
times = st.sampled_from([5.0, 10.0, 10.5, 100.0])
payloads = st.binary(max_size=40)
numbers = st.sampled_from([0x4000, 0x4001, 0x4FFF, 0x7FFF])
peer_names = st.sampled_from(PEERS)

ops = st.one_of(
    st.tuples(st.just("add"), st.sampled_from([0, 1]), budgets),
    st.tuples(st.just("remove"), st.sampled_from([0, 1])),
    st.tuples(st.just("permit"), st.sampled_from([0, 1]), peer_names, times, st.booleans()),
    st.tuples(st.just("forget_permission"), st.sampled_from([0, 1]), peer_names),
    st.tuples(st.just("bind"), st.sampled_from([0, 1]), numbers, peer_names, times),
    st.tuples(st.just("forget_channel"), st.sampled_from([0, 1]), numbers),
    st.tuples(st.just("set_budget"), st.sampled_from([0, 1]), budgets),
    st.tuples(st.just("spend"), st.sampled_from([0, 1]), st.integers(0, 200)),
    st.tuples(
        st.just("channel_data"),
        st.sampled_from(CLIENTS),
        numbers,
        payloads,
        st.sampled_from([0, 0, 3, -1, 100]),
    ),
    st.tuples(
        st.just("send"),
        st.sampled_from(CLIENTS),
        st.sampled_from([*PEERS, "listener", "bad-address"]),
        payloads,
        st.sampled_from(
            ["plain", "fingerprint", "bad-fingerprint", "dont-fragment", "extra", "no-data"]
        ),
    ),
    st.tuples(st.just("client_raw"), st.sampled_from(CLIENTS), st.binary(max_size=60)),
    st.tuples(st.just("binding"), st.sampled_from(CLIENTS)),
    st.tuples(
        st.just("peer"),
        peer_names,
        st.sampled_from([0, 1]),
        st.one_of(payloads, st.sampled_from([bytes(65504), bytes(65505)])),
    ),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 4.0, 6.0, 95.0])),
)


def send_indication(rig: Rig, peer: str, payload: bytes, shape: str) -> bytes:
    tid = bytes(range(1, 13))
    if peer == "bad-address":
        xor_peer = b"\x00\x01\x00"  # 3 bytes: not an address
    else:
        xor_peer = encode_xor_address(*rig.address(peer), tid)
    attributes: list[tuple[int, bytes]] = [(A.XOR_PEER_ADDRESS, xor_peer)]
    if shape != "no-data":
        attributes.append((A.DATA, payload))
    if shape == "dont-fragment":
        attributes.append((A.DONT_FRAGMENT, b""))
    if shape == "extra":
        attributes.append((A.SOFTWARE, b"x"))  # not the plain shape
    data = encode_message(
        Method.SEND,
        MessageClass.INDICATION,
        tid,
        attributes,
        fingerprint=shape in ("fingerprint", "bad-fingerprint"),
    )
    if shape == "bad-fingerprint":
        data = data[:-1] + bytes([data[-1] ^ 1])
    return data


def push(rig: Rig, op: tuple[Any, ...], now: float) -> object:
    """A table operation: what an allocation pushes into the fast path."""
    fp, kind = rig.fp, op[0]
    fd = rig.relays[RELAYS[op[1]]].fileno()
    if kind == "spend":
        return fp.spend(fd, op[2])
    if kind == "add":
        fp.add(fd, rig.listener.fileno(), rig.address(CLIENTS[op[1]]), op[2])
    elif kind == "remove":
        fp.remove(fd)
    elif kind == "permit":
        own = (rig.address("listener")[1],) if op[4] else ()
        fp.permit(fd, rig.address(op[2])[0], now + op[3], own)
    elif kind == "forget_permission":
        fp.forget_permission(fd, rig.address(op[2])[0])
    elif kind == "bind":
        fp.bind_channel(fd, op[2], rig.address(op[3]), now + op[4])
    elif kind == "forget_channel":
        fp.forget_channel(fd, op[2])
    else:
        fp.set_budget(fd, op[2])
    return None


def datagram(rig: Rig, op: tuple[Any, ...]) -> tuple[socket.socket, bytes, Address]:
    """A datagram operation: (from which socket, what, to where)."""
    kind, listener = op[0], rig.address("listener")
    if kind == "channel_data":
        _, client, number, payload, delta = op
        length = max(0, len(payload) + delta)
        data = number.to_bytes(2, "big") + length.to_bytes(2, "big") + payload
        return rig.clients[client], data, listener
    if kind == "send":
        return rig.clients[op[1]], send_indication(rig, op[2], op[3], op[4]), listener
    if kind == "client_raw":
        return rig.clients[op[1]], op[2] or b"\x00", listener
    if kind == "binding":
        request = encode_message(Method.BINDING, MessageClass.REQUEST, bytes(12))
        return rig.clients[op[1]], request, listener
    return rig.peers[op[1]], op[3], rig.address(RELAYS[op[2]])


def play(rig: Rig, op: tuple[Any, ...], clock: list[float]) -> object:
    """One operation on ``rig``; what Python got back (or the exception's type)."""
    kind, now = op[0], clock[0]
    if kind == "tick":
        clock[0] += op[1]
        return None
    try:
        if kind in TABLE_OPS:
            return push(rig, op, now)
        sock, data, destination = datagram(rig, op)
        sock.sendto(data, destination)
        if kind == "peer":
            return rig.fp.drain_relay(rig.relays[RELAYS[op[2]]].fileno(), now, LIMIT)
        handed = rig.fp.drain_listener(rig.listener.fileno(), now, LIMIT)
        return [(rig.describe(data), rig.name_of(source)) for data, source in handed]
    except (KeyError, ValueError) as exc:
        return type(exc).__name__


TABLE_OPS = {
    "add",
    "remove",
    "permit",
    "forget_permission",
    "bind",
    "forget_channel",
    "set_budget",
    "spend",
}


@pytest.fixture(scope="module")
def rigs() -> Iterator[tuple[Rig, Rig]]:
    rigs = (Rig(compiled=False), Rig(compiled=True))
    yield rigs
    for rig in rigs:
        for sock in (
            rig.listener,
            *rig.clients.values(),
            *rig.peers.values(),
            *rig.relays.values(),
        ):
            sock.close()


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=st.lists(ops, max_size=40))
def test_compiled_and_python_fast_paths_agree(
    rigs: tuple[Rig, Rig], sequence: list[tuple[Any, ...]]
) -> None:
    python, compiled = rigs
    clocks = [[1.0], [1.0]]
    for rig in rigs:
        rig.reset()
    for step, op in enumerate(sequence):
        results = [play(rig, op, clock) for rig, clock in zip(rigs, clocks, strict=True)]
        assert results[0] == results[1], (step, op)
        seen = [rig.observe() for rig in rigs]
        assert seen[0] == seen[1], (step, op)
        assert python.fp.counters() == compiled.fp.counters(), (step, op)
        assert [traffic(python, r) for r in RELAYS] == [traffic(compiled, r) for r in RELAYS]


def traffic(rig: Rig, relay: str) -> tuple[int, ...] | str:
    """One allocation's own counters (``FastPathAPI.traffic``), or the error's name."""
    try:
        return rig.fp.traffic(rig.relays[relay].fileno())
    except KeyError:
        return "KeyError"


def test_data_indications_carry_the_peer_address_xored_with_their_own_transaction_id() -> None:
    """Random transaction ids are the one difference the comparison above decodes away; check
    the compiled one decodes on its own (RFC 8489 §14.2, RFC 8656 §11.3)."""
    rig = Rig(compiled=True)
    rig.reset()
    fd = rig.relays["r0"].fileno()
    rig.fp.add(fd, rig.listener.fileno(), rig.address("c0"), math.inf)
    rig.fp.permit(fd, "127.0.0.1", 100.0, ())
    rig.peers["p0"].sendto(b"hello", rig.address("r0"))
    assert rig.fp.drain_relay(fd, 1.0, LIMIT) == 1
    data = rig.clients["c0"].recv(2048)
    msg = decode_message_untrusted(data)
    assert msg.method == Method.DATA
    assert msg.cls is MessageClass.INDICATION
    assert decode_xor_address_untrusted(
        msg.get(A.XOR_PEER_ADDRESS) or b"", msg.transaction_id
    ) == rig.address("p0")
    assert msg.get(A.DATA) == b"hello"
    with pytest.raises(StunDecodeError):
        decode_xor_address_untrusted(b"\x00\x01\x00", msg.transaction_id)
