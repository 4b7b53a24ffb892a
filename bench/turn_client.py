"""A minimal TURN-over-UDP client for the benchmarks' own load generators.

``turnutils_uclient`` can neither hold thousands of allocations open nor send at a fixed rate,
so the allocation and latency benchmarks speak TURN themselves. The wire format comes from the
project's own codec (``secureconnect.stun``); credentials are TURN REST ones
(``username = "expiry:user"``, ``password = base64(HMAC-SHA1(secret, username))``) and the
long-term key is MD5(username:realm:password), exactly what a WebRTC client does. The realm and
nonce come from the server's first 401, so the same client works against coturn (realm "coturn")
and ours (realm "secureconnect").
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from dataclasses import dataclass

from secureconnect.credentials import rest_password
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
    StunMessage,
    decode_message_untrusted,
    encode_message,
    long_term_key,
    new_transaction_id,
)
from secureconnect.stun.attributes import decode_error_code_untrusted, encode_xor_address

REQUESTED_TRANSPORT_UDP = bytes([17, 0, 0, 0])  # RFC 8656 §18.8: protocol number, 3 RFFU bytes
CHANNEL = 0x4000  # the first channel number in both the RFC 5766 and the RFC 8656 range
CHANNEL_HEADER = struct.Struct(">HH")


@dataclass(frozen=True)
class User:
    """TURN REST credentials for one user id, valid for an hour."""

    username: str
    password: str

    @classmethod
    def rest(cls, secret: str, user_id: str, ttl: int = 3600) -> User:
        username = f"{int(time.time()) + ttl}:{user_id}"
        return cls(username, rest_password(secret, username))


def allocate_unauthenticated() -> bytes:
    """The first Allocate: no credentials, answered with 401 carrying REALM and NONCE."""
    attrs = [(int(AttrType.REQUESTED_TRANSPORT), REQUESTED_TRANSPORT_UDP)]
    return encode_message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(), attrs)


def authenticated(
    method: int, user: User, realm: str, nonce: bytes, attrs: list[tuple[int, bytes]]
) -> tuple[bytes, bytes]:
    """(transaction id, request) for ``method`` with USERNAME/REALM/NONCE/MESSAGE-INTEGRITY."""
    tid = new_transaction_id()
    auth = [
        (int(AttrType.USERNAME), user.username.encode()),
        (int(AttrType.REALM), realm.encode()),
        (int(AttrType.NONCE), nonce),
    ]
    key = long_term_key(user.username, realm, user.password)
    return tid, encode_message(
        method, MessageClass.REQUEST, tid, [*auth, *attrs], integrity_key=key
    )


def allocate_authenticated(user: User, realm: str, nonce: bytes) -> bytes:
    """The second Allocate, answering the 401's challenge."""
    attrs = [(int(AttrType.REQUESTED_TRANSPORT), REQUESTED_TRANSPORT_UDP)]
    return authenticated(Method.ALLOCATE, user, realm, nonce, attrs)[1]


def decode(data: bytes) -> StunMessage | None:
    """A STUN message, or None for anything else (ChannelData, garbage)."""
    try:
        return decode_message_untrusted(data)
    except StunDecodeError:
        return None


def error_code(message: StunMessage) -> int:
    """The ERROR-CODE of an error response (0 when absent or malformed)."""
    value = message.get(AttrType.ERROR_CODE)
    if value is None:
        return 0
    try:
        return decode_error_code_untrusted(value)[0]
    except StunDecodeError:
        return 0


def challenge(message: StunMessage) -> tuple[str, bytes] | None:
    """(realm, nonce) from a 401 or 438 error response, else None."""
    realm, nonce = message.get(AttrType.REALM), message.get(AttrType.NONCE)
    if message.cls != MessageClass.ERROR or realm is None or nonce is None:
        return None
    return realm.decode(errors="replace"), nonce


class ChannelClient:
    """One blocking allocation with a channel bound to ``peer``: for the latency benchmark."""

    def __init__(
        self,
        server: tuple[str, int],
        secret: str,
        timeout: float = 2.0,
        source: str | None = None,
    ) -> None:
        self.server = server
        self.user = User.rest(secret, "latency")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        if source is not None:  # a loopback address of its own (TURN workers map by address)
            self.sock.bind((source, 0))
        self.sock.connect(server)
        self.realm = ""
        self.nonce = b""

    def close(self) -> None:
        self.sock.close()

    def _transact(self, tid: bytes, request: bytes) -> StunMessage:
        """Send ``request`` (up to 3 times) and return the response with the same id."""
        for _ in range(3):
            self.sock.send(request)
            try:
                while True:
                    message = decode(self.sock.recv(2048))
                    if message is not None and message.transaction_id == tid:
                        return message
            except TimeoutError:
                continue
        raise RuntimeError("no answer from the TURN server")

    def _request(self, method: int, attrs: list[tuple[int, bytes]]) -> StunMessage:
        """An authenticated request; a 438 (stale nonce) is retried once with the new nonce."""
        for _ in range(2):
            tid, request = authenticated(method, self.user, self.realm, self.nonce, attrs)
            answer = self._transact(tid, request)
            if answer.cls == MessageClass.SUCCESS:
                return answer
            fresh = challenge(answer)
            if error_code(answer) != 438 or fresh is None:
                raise RuntimeError(f"method {method:#x} failed with {error_code(answer)}")
            self.realm, self.nonce = fresh
        raise RuntimeError(f"method {method:#x}: stale nonce twice")

    def allocate_and_bind(self, peer: tuple[str, int]) -> None:
        """Allocate a relay and bind CHANNEL to ``peer`` (ChannelBind also installs the
        permission)."""
        first = allocate_unauthenticated()
        answer = self._transact(first[8:20], first)
        got = challenge(answer)
        if got is None:
            raise RuntimeError(f"expected a 401 challenge, got error {error_code(answer)}")
        self.realm, self.nonce = got
        attrs = [(int(AttrType.REQUESTED_TRANSPORT), REQUESTED_TRANSPORT_UDP)]
        self._request(Method.ALLOCATE, attrs)
        tid = b"\0" * 12  # XOR-PEER-ADDRESS of IPv4 does not depend on the transaction id
        bind = [
            (int(AttrType.CHANNEL_NUMBER), CHANNEL_HEADER.pack(CHANNEL, 0)),
            (int(AttrType.XOR_PEER_ADDRESS), encode_xor_address(peer[0], peer[1], tid)),
        ]
        self._request(Method.CHANNEL_BIND, bind)

    def release(self) -> None:
        """Delete the allocation (Refresh with LIFETIME 0, RFC 8656 §7.3), so that a later run
        that happens to bind the same source port does not meet it (437); errors are ignored:
        the server expires it anyway."""
        self.sock.setblocking(True)
        self.sock.settimeout(1.0)
        with contextlib.suppress(RuntimeError, OSError):
            self._request(Method.REFRESH, [(int(AttrType.LIFETIME), bytes(4))])


def relay_latency(
    server: tuple[str, int], secret: str, peer: tuple[str, int], *, count: int, rate: float
) -> list[float]:
    """Round-trip times (ms) of ``count`` 100-byte ChannelData datagrams sent at ``rate`` per
    second through a fresh allocation to the UDP echo ``peer`` and back.

    Each datagram carries its sequence number; the send time is kept here, so no clock has to
    be shared. Datagrams that do not come back within a second of the last send count as lost
    (absent from the result). Bounded: ``count`` is capped at 100,000.
    """
    client = ChannelClient(server, secret)
    try:
        client.allocate_and_bind(peer)
        sock = client.sock
        sock.setblocking(False)
        count = min(count, 100_000)
        sent_at = [0.0] * count
        rtts: list[float] = []
        pad = bytes(92)
        interval = 1.0 / rate
        start = time.perf_counter()
        next_send, n = start, 0
        deadline = start + count * interval + 1.0
        while (now := time.perf_counter()) < deadline and len(rtts) < count:
            if n < count and now >= next_send:
                sent_at[n] = now
                sock.send(CHANNEL_HEADER.pack(CHANNEL, 100) + n.to_bytes(8, "big") + pad)
                n += 1
                next_send += interval
                continue
            wait = max(next_send - now, 0.0) if n < count else deadline - now
            if not select.select([sock], [], [], wait)[0]:
                continue
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            received = time.perf_counter()
            if len(data) >= 12 and data[0] & 0xC0 == 0x40:
                seq = int.from_bytes(data[4:12], "big")
                if seq < n:
                    rtts.append((received - sent_at[seq]) * 1000.0)
        return rtts
    finally:
        client.close()
