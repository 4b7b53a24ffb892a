"""What the adversarial tests attack with: the appliance on free loopback ports, and a TURN
client over UDP, TCP or TLS that builds valid authenticated requests but sends them however the
attack needs (several in one segment, split at odd places, retransmitted, out of order).

On pytest's pythonpath as ``attacker``. Everything is synchronous and bounded by socket
timeouts, so an attack that hangs the server fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import turnwire
from appliance import Running, free_port, run_appliance
from turnwire import peer_attribute

from secureconnect.credentials import rest_password
from secureconnect.netaddr import Address
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    StunMessage,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    new_transaction_id,
)

A = AttrType
SECRET = "adversarial-secret"
REALM = "secureconnect"  # the embedded default realm
UDP_TRANSPORT = bytes((17, 0, 0, 0))  # REQUESTED-TRANSPORT: UDP (RFC 8656 §14.7)


@dataclass
class Target:
    """A running appliance with TURN on ``port`` (UDP and TCP) and ``tls_port``."""

    app: Running
    port: int
    tls_port: int

    @property
    def pid(self) -> int:
        return self.app.proc.pid

    def fds(self) -> int:
        """Open file descriptors of the appliance process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """Resident memory of the appliance process, KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def crashes(self) -> list[str]:
        """Log lines that say a component crashed or failed a connection."""
        return [
            line
            for line in self.app.log_text().splitlines()
            if "component-crashed" in line or "Traceback" in line or "-failed" in line
        ]

    def assert_healthy(self) -> None:
        assert self.app.proc.poll() is None, self.app.log_text()[-4000:]
        assert not self.crashes(), "\n".join(self.crashes()[:5])


@contextmanager
def turn_target(tmp_path: Path, *settings: str) -> Iterator[Target]:
    """``secureconnect run turn`` on free ports with a known REST secret and loopback peers
    (what the adversarial tests relay to); ``settings`` are extra ``--set`` overrides."""
    port, tls_port = free_port(), free_port(socket.SOCK_STREAM)
    overrides = (
        f"turn.port={port}",
        f"turn.tls_port={tls_port}",
        f'turn.secrets=["{SECRET}"]',
        f'general.state_dir="{tmp_path / "state"}"',
        "general.drain_timeout=0.5",
        *settings,
    )
    with run_appliance(tmp_path, "turn", settings=overrides) as app:
        yield Target(app, port, tls_port)


def error_code(msg: StunMessage) -> int | None:
    """The ERROR-CODE of an error response; None for a success."""
    if msg.cls is not MessageClass.ERROR:
        return None
    value = msg.get(A.ERROR_CODE)
    assert value is not None
    return decode_error_code_untrusted(value)[0]


@dataclass
class WireClient:
    """A TURN client on one connection (one 5-tuple) over ``transport``."""

    transport: str  # "udp", "tcp" or "tls"
    port: int
    user: str = "mallory"
    ttl: int = 600
    password: str | None = None  # None: the REST password for ``username``
    timeout: float = 5.0
    source_ip: str = ""  # default: the server's loopback address family's own
    server_ip: str = "127.0.0.1"
    sock: socket.socket = field(init=False)
    nonce: bytes = b""
    realm: str = REALM
    _framer: StreamFramer = field(default_factory=StreamFramer)

    def __post_init__(self) -> None:
        self.username = f"{int(time.time()) + self.ttl}:{self.user}"
        if self.password is None:
            self.password = rest_password(SECRET, self.username)
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        v6 = ":" in self.server_ip
        raw = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
        raw.settimeout(self.timeout)
        raw.bind((self.source_ip or self.server_ip, 0))
        raw.connect((self.server_ip, self.port))
        if self.transport == "tls":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the appliance's generated self-signed cert
            raw = context.wrap_socket(raw)
        self.sock = raw

    @property
    def credential(self) -> turnwire.Credential:
        """What the client authenticates with now (tests change username and password)."""
        assert self.password is not None
        return turnwire.Credential(self.username, self.password, self.realm)

    def close(self) -> None:
        self.sock.close()

    # -- building -------------------------------------------------------------------------

    def build(
        self,
        method: int,
        attributes: list[tuple[int, bytes]] | None = None,
        *,
        tid: bytes | None = None,
        cls: MessageClass = MessageClass.REQUEST,
        authenticate: bool = True,
    ) -> bytes:
        """One request with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (or an indication)."""
        tid = tid or new_transaction_id()
        if cls is MessageClass.INDICATION:
            return turnwire.indication(method, tid, attributes or [])
        credential = self.credential if authenticate else None
        return turnwire.request(method, tid, attributes or [], credential, self.nonce)

    def allocate_bytes(self, *extra: tuple[int, bytes], tid: bytes | None = None) -> bytes:
        return self.build(
            Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, UDP_TRANSPORT), *extra], tid=tid
        )

    def refresh_bytes(self, lifetime: int, tid: bytes | None = None) -> bytes:
        return self.build(Method.REFRESH, [(A.LIFETIME, lifetime.to_bytes(4, "big"))], tid=tid)

    def permission_bytes(self, peer: Address) -> bytes:
        tid = new_transaction_id()
        return self.build(Method.CREATE_PERMISSION, [peer_attribute(peer, tid)], tid=tid)

    def channel_bind_bytes(self, number: int, peer: Address) -> bytes:
        tid = new_transaction_id()
        attrs = [(A.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\0\0"), peer_attribute(peer, tid)]
        return self.build(Method.CHANNEL_BIND, attrs, tid=tid)

    def send_bytes(self, peer: Address, data: bytes) -> bytes:
        tid = new_transaction_id()
        attrs = [peer_attribute(peer, tid), (A.DATA, data)]
        return self.build(Method.SEND, attrs, tid=tid, cls=MessageClass.INDICATION)

    def channel_data(self, number: int, data: bytes) -> bytes:
        """ChannelData, padded on streams (RFC 8656 §12.5)."""
        return turnwire.channel_data(number, data, stream=self.transport != "udp")

    # -- wire -----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.send(data)
        else:
            self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next message (a datagram, or one frame of the stream)."""
        if self.transport == "udp":
            return self.sock.recv(65536)
        while (frame := self._framer.next_frame()) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._framer.feed(chunk)
        return frame

    def receive_message(self) -> StunMessage:
        """The next STUN message (ChannelData frames in between are skipped)."""
        while True:
            data = self.receive()
            if data[0] >> 6 == 0:
                return decode_message_untrusted(data)

    def learn_nonce(self) -> None:
        """An unauthenticated Allocate: the 401 brings REALM and NONCE."""
        self.send_raw(
            self.build(
                Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, UDP_TRANSPORT)], authenticate=False
            )
        )
        reply = self.receive_message()
        nonce, realm = reply.get(A.NONCE), reply.get(A.REALM)
        assert nonce is not None, reply
        assert realm is not None, reply
        self.nonce, self.realm = nonce, realm.decode()

    def call(self, data: bytes) -> StunMessage:
        """Send a request and wait for the response with its transaction id."""
        self.send_raw(data)
        tid = data[8:20]
        while True:
            reply = self.receive_message()
            if reply.transaction_id == tid:
                return reply

    def allocate(self, *extra: tuple[int, bytes]) -> StunMessage:
        if not self.nonce:
            self.learn_nonce()
        return self.call(self.allocate_bytes(*extra))

    def relayed(self, reply: StunMessage) -> Address:
        value = reply.get(A.XOR_RELAYED_ADDRESS)
        assert value is not None, reply
        return decode_xor_address_untrusted(value, reply.transaction_id)


def open_client(transport: str, target: Target, **kwargs: object) -> WireClient:
    """A client of ``target`` over ``transport`` (TLS goes to its TLS port)."""
    port = target.tls_port if transport == "tls" else target.port
    return WireClient(transport, port, **kwargs)  # type: ignore[arg-type]


@contextmanager
def echo_peer(ip: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A UDP socket a test reads relayed datagrams from (and answers by hand)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((ip, 0))
        yield sock


@dataclass
class Bystander:
    """A legitimate client with an allocation, a permission and a channel to ``peer``: the
    attack tests check after each attack that it still relays both ways."""

    client: WireClient
    peer: socket.socket
    channel: int = 0x4001

    @classmethod
    def start(cls, target: Target, peer: socket.socket, transport: str = "udp") -> Bystander:
        client = open_client(transport, target, user="bystander")
        reply = client.allocate()
        assert error_code(reply) is None, reply
        peer_address = peer.getsockname()
        bound = client.call(client.channel_bind_bytes(0x4001, peer_address))
        assert error_code(bound) is None, bound
        return cls(client, peer)

    def check(self) -> None:
        """Refresh succeeds, and a datagram goes to the peer and comes back."""
        refreshed = self.client.call(self.client.refresh_bytes(600))
        assert error_code(refreshed) is None, f"bystander refresh failed: {refreshed}"
        self.client.send_raw(self.client.channel_data(self.channel, b"ping"))
        data, relay = self.peer.recvfrom(2048)
        assert data == b"ping"
        self.peer.sendto(b"pong", relay)
        while True:
            frame = self.client.receive()
            if frame[0] >> 6 == 1:
                assert frame[4:8] == b"pong"
                return

    def close(self) -> None:
        self.client.close()


__all__ = [
    "SECRET",
    "Bystander",
    "Method",
    "Target",
    "WireClient",
    "echo_peer",
    "error_code",
    "open_client",
    "peer_attribute",
    "turn_target",
]
