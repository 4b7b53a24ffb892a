"""Allocation churn against a TURN server over UDP: many short-lived REST usernames, each an
Allocate and then a Refresh with LIFETIME 0, as fast as the server answers (issue #17's churn
test; on pytest's pythonpath as ``churn``).

Many UDP sockets, spread over a few loopback source addresses, each keep one allocation's pair
of requests in flight: the Allocate and the Refresh 0 go out back to back (a server handles one
5-tuple's datagrams in order, so the Refresh finds the allocation), and the socket's next
username starts once both are answered. What keeps it fast: one 401 per source address (a NONCE
is bound to the client's IP, not its port, and lasts ten minutes), so the per-address 401 rate
limit is met once; responses are told apart by their transaction id and their message type, and
decoded only when they are errors; every wait is one ``epoll`` over all the sockets.

With ``traffic_every`` = k, every k-th username also relays ``payload`` to ``peer``: its
Allocate goes with a CreatePermission, and once that is answered a Send indication and the
Refresh 0 follow (the Send after the answer: a fast path relays a Send as soon as it knows the
allocation, ahead of a CreatePermission still waiting in the same batch for the core).

Losses are retransmitted with the same transaction ids (the server answers a retransmitted
Allocate with the allocation it made, RFC 8656 §7.2); a 438 renews the source's nonce. Every
wait is bounded: :meth:`Churn.run` returns at its deadline whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from secureconnect.credentials import rest_password
from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_error_code_untrusted,
    decode_message_untrusted,
    encode_message,
    encode_xor_address,
    long_term_key,
)

A = AttrType
REALM = "secureconnect"
UDP = (A.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))
ZERO_LIFETIME = (A.LIFETIME, bytes(4))
ALLOCATE_OK, ALLOCATE_ERROR = b"\x01\x03", b"\x01\x13"  # RFC 8489 §5: method and class bits
REFRESH_OK, REFRESH_ERROR = b"\x01\x04", b"\x01\x14"
PERMISSION_OK, PERMISSION_ERROR = b"\x01\x08", b"\x01\x18"
RETRANSMIT = 1.0  # seconds without an answer before a pair's requests go again
MAX_TRIES = 5


@dataclass
class Slot:
    """One socket and the username whose pair of requests it has in flight."""

    sock: socket.socket
    source: str
    username: str = ""
    key: bytes = b""
    allocate_tid: bytes = b""
    refresh_tid: bytes = b""
    permission_tid: bytes = b""  # b"": this username relays nothing
    allocated: bool = False
    permitted: bool = False
    refreshed: bool = False
    sent_at: float = 0.0
    tries: int = 0


@dataclass
class Churn:
    """See the module docstring; ``completed`` counts usernames allocated and deleted."""

    server: Address
    secret: str
    sources: tuple[str, ...] = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
    sockets_per_source: int = 64
    prefix: str = "churn"
    ttl: int = 600
    realm: str = REALM
    traffic_every: int = 0
    peer: Address = ("127.0.0.1", 9)
    payload: bytes = bytes(100)
    completed: int = 0
    relayed: int = 0  # usernames that sent their payload
    started: int = 0
    retransmits: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    _slots: dict[int, Slot] = field(default_factory=dict)
    _nonces: dict[str, bytes] = field(default_factory=dict)
    _epoll: select.epoll | None = None

    def open(self) -> None:
        """Bind the sockets and learn each source address's nonce (one 401 each)."""
        self._epoll = select.epoll()
        for source in self.sources:
            for _ in range(self.sockets_per_source):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((source, 0))
                sock.connect(self.server)
                sock.setblocking(False)
                self._slots[sock.fileno()] = Slot(sock, source)
                self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._nonces[source] = self._challenge(source)

    def close(self) -> None:
        for slot in self._slots.values():
            slot.sock.close()
        self._slots.clear()
        if self._epoll is not None:
            self._epoll.close()

    def run(self, target: int, deadline: float) -> None:
        """Churn until ``target`` usernames in all have completed, or ``deadline``
        (``time.monotonic()``): whatever is in flight then is left."""
        epoll = self._epoll
        assert epoll is not None, "open() first"
        for slot in self._slots.values():
            if not slot.username:
                self._next(slot, target)
        while self.completed < target and time.monotonic() < deadline:
            for fd, _ in epoll.poll(0.05):
                slot = self._slots[fd]
                while True:
                    try:
                        data = slot.sock.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    self._answer(slot, data, target)
            now = time.monotonic()
            for slot in self._slots.values():
                if slot.username and now - slot.sent_at > RETRANSMIT:
                    self._retransmit(slot, target)

    # -- one pair ---------------------------------------------------------------------------

    def _next(self, slot: Slot, target: int) -> None:
        slot.username = ""
        if self.started >= target:
            return
        index, self.started = self.started, self.started + 1
        slot.username = f"{int(time.time()) + self.ttl}:{self.prefix}-{index}"
        slot.key = long_term_key(
            slot.username, self.realm, rest_password(self.secret, slot.username)
        )
        slot.allocate_tid, slot.refresh_tid = os.urandom(12), os.urandom(12)
        relays = self.traffic_every > 0 and index % self.traffic_every == 0
        slot.permission_tid = os.urandom(12) if relays else b""
        slot.allocated = slot.refreshed = False
        slot.permitted = not relays
        slot.tries = 0
        self._send(slot)

    def _send(self, slot: Slot) -> None:
        """What ``slot`` still waits an answer for: the Allocate (and CreatePermission) until
        answered, then (once permitted) the Send and the Refresh 0."""
        credentials = [
            (A.USERNAME, slot.username.encode()),
            (A.REALM, self.realm.encode()),
            (A.NONCE, self._nonces[slot.source]),
        ]
        messages = []
        if not slot.allocated:
            messages.append((Method.ALLOCATE, slot.allocate_tid, [UDP, *credentials]))
        if slot.permission_tid and not slot.permitted:
            peer = encode_xor_address(*self.peer, slot.permission_tid)
            attributes = [(A.XOR_PEER_ADDRESS, peer), *credentials]
            messages.append((Method.CREATE_PERMISSION, slot.permission_tid, attributes))
        if slot.permitted and not slot.refreshed:
            messages.append((Method.REFRESH, slot.refresh_tid, [ZERO_LIFETIME, *credentials]))
        datagrams = [
            encode_message(method, MessageClass.REQUEST, tid, attributes, integrity_key=slot.key)
            for method, tid, attributes in messages
        ]
        if slot.permission_tid and slot.permitted and not slot.refreshed and not slot.tries:
            datagrams.insert(0, self._send_indication())
            self.relayed += 1
        for data in datagrams:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                slot.sock.send(data)  # or retransmitted later
        slot.sent_at = time.monotonic()

    def _send_indication(self) -> bytes:
        tid = os.urandom(12)
        attributes = [
            (A.XOR_PEER_ADDRESS, encode_xor_address(*self.peer, tid)),
            (A.DATA, self.payload),
        ]
        return encode_message(Method.SEND, MessageClass.INDICATION, tid, attributes)

    def _answer(self, slot: Slot, data: bytes, target: int) -> None:
        if not slot.username or len(data) < 20:
            return
        kind, tid = data[:2], data[8:20]
        if tid == slot.allocate_tid and not slot.allocated:
            if kind == ALLOCATE_ERROR:
                self._error(slot, data, "allocate", target)
                return
            slot.allocated = kind == ALLOCATE_OK
        elif tid == slot.permission_tid and not slot.permitted:
            self._permission_answered(slot, kind, data, target)
            return
        elif tid == slot.refresh_tid and not slot.refreshed:
            # A retransmitted Refresh 0 whose first copy deleted the allocation gets 437.
            late = kind == REFRESH_ERROR and slot.tries > 0 and slot.allocated
            if kind != REFRESH_OK and not (late and _code(data) == 437):
                self._error(slot, data, "refresh", target)
                return
            # a success: the allocation was there, so the Allocate succeeded too
            slot.refreshed = slot.allocated = True
        if slot.allocated and slot.refreshed:
            self.completed += 1
            self._next(slot, target)

    def _permission_answered(self, slot: Slot, kind: bytes, data: bytes, target: int) -> None:
        if kind == PERMISSION_OK:  # now the Send, then the Refresh 0
            slot.permitted = slot.allocated = True
            slot.tries = 0
            self._send(slot)
        elif kind == PERMISSION_ERROR:
            self._error(slot, data, "permission", target)

    def _error(self, slot: Slot, data: bytes, what: str, target: int) -> None:
        code = _code(data)
        if code == 438:  # RFC 8489 §9.2.4: a fresh NONCE came with it; the pair goes again
            nonce = decode_message_untrusted(data).get(A.NONCE)
            if nonce is not None:
                self._nonces[slot.source] = nonce
            self._retransmit(slot, target)
            return
        self.errors[f"{what} {code}"] += 1
        self._next(slot, target)

    def _retransmit(self, slot: Slot, target: int) -> None:
        slot.tries += 1
        if slot.tries > MAX_TRIES:
            self.errors["unanswered"] += 1
            self._next(slot, target)
            return
        self.retransmits += 1
        self._send(slot)

    def _challenge(self, source: str) -> bytes:
        """The NONCE of a 401 to an unauthenticated Allocate from ``source``."""
        slot = next(s for s in self._slots.values() if s.source == source)
        request = encode_message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), [UDP])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            slot.sock.send(request)
            if select.select([slot.sock], [], [], 0.5)[0]:
                nonce = decode_message_untrusted(slot.sock.recv(2048)).get(A.NONCE)
                if nonce is not None:
                    return nonce
        raise AssertionError(f"no 401 with a NONCE for {source} in 10 s")


def _code(data: bytes) -> int:
    value = decode_message_untrusted(data).get(A.ERROR_CODE)
    return decode_error_code_untrusted(value)[0] if value is not None else -1
