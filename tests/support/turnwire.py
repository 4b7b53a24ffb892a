"""A blocking TURN/STUN client over real sockets, for the adversarial tests and ``bench/fuzz.py``.

The adversarial tools talk to the appliance as a black box, from the outside, the way an attacker
or a broken client would: plain blocking sockets (UDP, TCP, TLS), messages built with the
project's own codec (``secureconnect.stun``), TURN REST credentials. Everything a fuzzer needs
besides its own logic is here, written once:

* message builders (:func:`request`, :func:`indication`, :func:`channel_data`, peer attributes,
  including an IPv4-mapped IPv6 peer the codec itself would never encode);
* :class:`Conn` - one client 5-tuple (:class:`UdpConn`, :class:`StreamConn` for TCP and TLS) with
  bounded receives that return whole frames (streams go through ``StreamFramer``), abrupt closes
  (RST) and byte streams split at chosen offsets;
* :class:`Session` - a well-behaved client on a connection (learns the nonce, retransmits over
  UDP, waits for its own transaction): bystanders, health checks and quota probes use it;
* :func:`udp_echo` - a local UDP echo peer in a thread (the relay's far end);
* probes of the appliance process (:func:`fd_count`, :func:`rss_kib`) and of its log
  (:func:`problem_lines`: crashes, restarts, logged tracebacks).

Every wait has a deadline; nothing here leaves loopback. On pytest's pythonpath as ``turnwire``;
``bench/`` puts ``tests/support`` on its path.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from secureconnect.credentials import rest_password
from secureconnect.netaddr import Address
from secureconnect.stun import (
    MAGIC_COOKIE,
    AttrType,
    MessageClass,
    Method,
    StreamFramer,
    StunDecodeError,
    StunMessage,
    decode_error_code_untrusted,
    decode_message_untrusted,
    decode_xor_address_untrusted,
    encode_message,
    encode_xor_address,
    long_term_key,
)

A = AttrType
REQUESTED_UDP = bytes((17, 0, 0, 0))  # RFC 8656 §18.8: protocol 17, three RFFU bytes
REALM = "secureconnect"  # the appliance's default realm
RECV = 65536
#: log events of a component that died (supervisor.py) and of failures the server caught and
#: logged with a traceback (transport/listeners.py, turn/serve.py): each one is a bug.
CRASH_EVENTS = ("event=component-crashed", "event=component-exited")
FAILURE_EVENTS = ("event=connection-handler-failed", "event=packet-handling-failed")


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """Long-term credentials: a TURN REST username/password (or any pair) and the realm."""

    username: str
    password: str
    realm: str = REALM

    @classmethod
    def rest(cls, secret: str, user: str, ttl: int = 3600, realm: str = REALM) -> Credential:
        """``<expiry>:<user>`` with password base64(HMAC-SHA1(secret, username))."""
        username = f"{int(time.time()) + ttl}:{user}"
        return cls(username, rest_password(secret, username), realm)

    @property
    def key(self) -> bytes:
        return long_term_key(self.username, self.realm, self.password)


def request(
    method: int,
    tid: bytes,
    attributes: Sequence[tuple[int, bytes]] = (),
    credential: Credential | None = None,
    nonce: bytes = b"",
    *,
    fingerprint: bool = False,
) -> bytes:
    """A request; with ``credential`` it carries USERNAME, REALM, NONCE and MESSAGE-INTEGRITY."""
    attrs = list(attributes)
    key = None
    if credential is not None:
        attrs += [
            (A.USERNAME, credential.username.encode()),
            (A.REALM, credential.realm.encode()),
            (A.NONCE, nonce),
        ]
        key = credential.key
    return encode_message(
        method, MessageClass.REQUEST, tid, attrs, integrity_key=key, fingerprint=fingerprint
    )


def indication(method: int, tid: bytes, attributes: Sequence[tuple[int, bytes]]) -> bytes:
    """An indication (Send), never authenticated."""
    return encode_message(method, MessageClass.INDICATION, tid, list(attributes))


def channel_data(number: int, payload: bytes, *, stream: bool) -> bytes:
    """A ChannelData message; padded to 4 bytes on streams (RFC 8656 §12.5)."""
    head = struct.pack(">HH", number, len(payload))
    return head + payload + (bytes(-len(payload) & 3) if stream else b"")


def peer_attribute(peer: Address, tid: bytes) -> tuple[int, bytes]:
    """XOR-PEER-ADDRESS for ``peer``; an IPv4-mapped IPv6 address keeps its IPv6 family (the
    codec would fold it into IPv4, which is exactly what an attacker would not do)."""
    ip, port = peer
    mapped = ":" in ip and ipaddress.IPv6Address(ip).ipv4_mapped is not None
    if not mapped:
        return A.XOR_PEER_ADDRESS, encode_xor_address(ip, port, tid)
    pad = int.from_bytes(MAGIC_COOKIE.to_bytes(4, "big") + tid, "big")
    value = int(ipaddress.IPv6Address(ip)) ^ pad
    head = struct.pack(">BBH", 0, 2, port ^ (MAGIC_COOKIE >> 16))
    return A.XOR_PEER_ADDRESS, head + value.to_bytes(16, "big")


def decode(data: bytes) -> StunMessage | None:
    """A STUN message, or None for anything else (ChannelData, garbage)."""
    if not data or data[0] >> 6:
        return None
    try:
        return decode_message_untrusted(data)
    except StunDecodeError:
        return None


def error_code(message: StunMessage) -> int:
    """0 for a success response, the ERROR-CODE of an error (-1 when it has none)."""
    if message.cls is not MessageClass.ERROR:
        return 0
    value = message.get(A.ERROR_CODE)
    try:
        return decode_error_code_untrusted(value)[0] if value is not None else -1
    except StunDecodeError:
        return -1


def relayed_address(message: StunMessage) -> Address | None:
    """XOR-RELAYED-ADDRESS of an Allocate success."""
    value = message.get(A.XOR_RELAYED_ADDRESS)
    if value is None:
        return None
    try:
        return decode_xor_address_untrusted(value, message.transaction_id)
    except StunDecodeError:
        return None


# -- connections -----------------------------------------------------------------------------


class Conn:
    """One client 5-tuple to the server: send bytes, receive whole frames with a deadline."""

    transport = ""
    alive = True

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def send_split(self, data: bytes, cuts: Sequence[int], gap: float) -> None:
        """Send ``data`` in pieces cut at ``cuts`` (offsets), ``gap`` seconds apart."""
        start = 0
        for cut in [*sorted(c for c in cuts if 0 < c < len(data)), len(data)]:
            if cut > start:
                self.send(data[start:cut])
                start = cut
                if gap and cut < len(data):
                    time.sleep(gap)

    def receive(self, timeout: float) -> list[bytes]:
        """Frames that arrive within ``timeout`` s: returns as soon as some have arrived."""
        raise NotImplementedError

    def close(self, *, reset: bool = False) -> None:
        raise NotImplementedError

    @property
    def local(self) -> Address:
        raise NotImplementedError


class UdpConn(Conn):
    """A connected UDP socket (it hears only the server)."""

    transport = "udp"

    def __init__(self, server: Address, bind: Address | None = None) -> None:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if bind is not None:  # the 5-tuple of a socket closed earlier, to clean up after it
                self.sock.bind(bind)
            self.sock.connect(server)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self._local: Address = (name[0], name[1])

    def send(self, data: bytes) -> None:
        # ICMP port unreachable from an earlier send, a full buffer: a lost datagram
        with suppress(OSError):
            self.sock.send(data)

    def receive(self, timeout: float) -> list[bytes]:
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.sock.recv(RECV))
                continue
            except BlockingIOError:
                pass
            except OSError:  # ECONNREFUSED: nothing listens (the component restarts)
                pass
            left = deadline - time.monotonic()
            if frames or left <= 0 or self.sock.fileno() < 0:
                return frames
            select.select([self.sock], [], [], left)

    def close(self, *, reset: bool = False) -> None:
        self.alive = False
        self.sock.close()

    @property
    def local(self) -> Address:
        """The client address (also once closed)."""
        return self._local


class StreamConn(Conn):
    """A TCP or TLS connection with a frame reader; ``alive`` turns False at EOF or reset."""

    def __init__(
        self, server: Address, tls: ssl.SSLContext | None = None, timeout: float = 5.0
    ) -> None:
        self.transport = "tls" if tls is not None else "tcp"
        self.sock = stream_socket(server, tls, timeout)
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        if not self.alive:
            return
        try:
            self.sock.sendall(data)
        except (OSError, ValueError):
            self.alive = False

    def receive(self, timeout: float) -> list[bytes]:
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while self.alive:
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            left = deadline - time.monotonic()
            wait = 0.0 if frames or pending else max(left, 0.0)
            if not pending and not select.select([self.sock], [], [], wait)[0]:
                break
            try:
                data = self.sock.recv(RECV)
            except (OSError, ValueError):  # reset, or a TLS error: the connection is over
                data = b""
            if not data:
                self.alive = False
                break
            try:
                self.framer.feed(data)
                frames.extend(self.framer.frames())
            except StunDecodeError:
                self.alive = False
        return frames

    def close(self, *, reset: bool = False) -> None:
        self.alive = False
        if reset:
            with suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with suppress(OSError):
            self.sock.close()

    @property
    def local(self) -> Address:
        name = self.sock.getsockname()
        return name[0], name[1]


def stream_socket(
    server: Address, tls: ssl.SSLContext | None = None, timeout: float = 5.0
) -> socket.socket:
    """A TCP connection to ``server`` without Nagle's delay, wrapped in TLS when ``tls`` is
    given (closed again if the handshake fails), with ``timeout`` on every call."""
    raw = socket.create_connection(server, timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = raw
    if tls is not None:
        try:
            sock = tls.wrap_socket(raw, server_hostname=server[0])
        except BaseException:
            raw.close()
            raise
    sock.settimeout(timeout)
    return sock


def is_stream(transport: str) -> bool:
    """Whether a transport name (``udp``, ``tcp``, ``tls``, ``udp6``...) is TCP or TLS."""
    return not transport.startswith("udp")


@dataclass(frozen=True)
class Endpoints:
    """Where the TURN server listens (the TLS context trusts its certificate). Transport names
    ending in 6 (``udp6``, ``tcp6``, ``tls6``) reach it on ``host6``."""

    host: str
    port: int
    tls_port: int
    tls: ssl.SSLContext
    host6: str = "::1"

    def host_for(self, transport: str) -> str:
        return self.host6 if transport.endswith("6") else self.host

    def open(self, transport: str) -> Conn:
        host = self.host_for(transport)
        if transport.startswith("udp"):
            return UdpConn((host, self.port))
        if transport.startswith("tcp"):
            return StreamConn((host, self.port))
        return StreamConn((host, self.tls_port), self.tls)


def trusting_context(state_dir: Path) -> ssl.SSLContext:
    """A client context that trusts only the self-signed certificate generated in
    ``state_dir`` (whose names include 127.0.0.1)."""
    certs = sorted(state_dir.rglob("selfsigned-cert.pem"))
    if not certs:
        raise RuntimeError(f"no generated certificate under {state_dir}")
    return ssl.create_default_context(cafile=str(certs[0]))


# -- a well-behaved client -------------------------------------------------------------------


class Session:
    """A TURN client that does things right on one :class:`Conn`: learns REALM/NONCE from a
    401, answers a 438, retransmits over UDP, waits (bounded) for its own transaction. Frames
    it reads that are not its answer are kept in ``other`` (relayed data, late answers)."""

    def __init__(self, conn: Conn, credential: Credential) -> None:
        self.conn = conn
        self.credential = credential
        self.nonce = b""
        self.other: list[bytes] = []

    def transact(
        self, method: int, attributes: Sequence[tuple[int, bytes]], timeout: float = 3.0
    ) -> StunMessage | None:
        """The final answer to an authenticated ``method`` request; None if none came."""
        deadline = time.monotonic() + timeout
        for _ in range(4):
            tid = os.urandom(12)
            credential = self.credential if self.nonce else None
            data = request(method, tid, attributes, credential, self.nonce)
            answer = self._exchange(tid, data, deadline)
            if answer is None:
                return None
            nonce = answer.get(A.NONCE)
            if error_code(answer) in (401, 438) and nonce is not None and nonce != self.nonce:
                self.nonce = nonce  # first contact (401) or a stale nonce (438): again
                realm = answer.get(A.REALM)
                if realm is not None:
                    self.credential = Credential(
                        self.credential.username, self.credential.password, realm.decode()
                    )
                continue
            return answer
        return None

    def _exchange(self, tid: bytes, data: bytes, deadline: float) -> StunMessage | None:
        resend = 0.0
        while (left := deadline - time.monotonic()) > 0:
            if time.monotonic() >= resend:
                self.conn.send(data)
                # Streams are reliable: send once. UDP: again every half second.
                stream = is_stream(self.conn.transport)
                resend = deadline if stream else time.monotonic() + 0.5
            for frame in self.conn.receive(min(left, 0.5)):
                message = decode(frame)
                if message is not None and message.transaction_id == tid:
                    return message
                self.other.append(frame)
            if not self.conn.alive:
                return None
        return None

    def challenge(self, timeout: float = 3.0) -> bytes:
        """Learn REALM and NONCE from the 401 to an unauthenticated Refresh (nothing is
        created); the nonce, b"" if none came."""
        tid = os.urandom(12)
        data = request(Method.REFRESH, tid)
        answer = self._exchange(tid, data, time.monotonic() + timeout)
        nonce = answer.get(A.NONCE) if answer is not None else None
        realm = answer.get(A.REALM) if answer is not None else None
        if nonce is not None and realm is not None:
            self.nonce = nonce
            self.credential = Credential(
                self.credential.username, self.credential.password, realm.decode()
            )
        return self.nonce

    def allocate(self, *extra: tuple[int, bytes]) -> StunMessage | None:
        return self.transact(Method.ALLOCATE, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP), *extra])

    def refresh(self, lifetime: int) -> StunMessage | None:
        return self.transact(Method.REFRESH, [(A.LIFETIME, lifetime.to_bytes(4, "big"))])

    def channel_bind(self, number: int, peer: Address) -> StunMessage | None:
        attrs = [(A.CHANNEL_NUMBER, struct.pack(">HH", number, 0)), peer_attribute(peer, bytes(12))]
        return self.transact(Method.CHANNEL_BIND, attrs)

    def binding(self, timeout: float = 3.0) -> StunMessage | None:
        """An unauthenticated Binding request's answer."""
        tid = os.urandom(12)
        return self._exchange(tid, request(Method.BINDING, tid), time.monotonic() + timeout)

    def echo(self, number: int, payload: bytes, timeout: float = 2.0) -> bool:
        """Send ``payload`` as ChannelData on ``number`` and wait for the same payload to come
        back on that channel (through a UDP echo peer); UDP sends it up to three times."""
        stream = is_stream(self.conn.transport)
        frame = channel_data(number, payload, stream=stream)
        deadline = time.monotonic() + timeout
        tries = 0
        while (left := deadline - time.monotonic()) > 0:
            if tries == 0 or (not stream and tries < 3 and left < timeout * (3 - tries) / 3):
                self.conn.send(frame)
                tries += 1
            for got in self.conn.receive(min(left, 0.2)):
                if got[:2] == frame[:2] and got[4 : 4 + len(payload)] == payload:
                    return True
            if not self.conn.alive:
                return False
        return False


# -- the far end -----------------------------------------------------------------------------


@contextmanager
def udp_echo(host: str = "127.0.0.1") -> Iterator[Address]:
    """A UDP echo server on ``host`` in a daemon thread (every datagram goes back to its
    sender), for relays to talk to; stopped when the block ends."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            for _ in range(256):
                try:
                    data, source = sock.recvfrom(RECV)
                    sock.sendto(data, source)
                except BlockingIOError:
                    break
                except OSError:
                    continue

    thread = threading.Thread(target=serve, name=f"udp-echo-{host}", daemon=True)
    thread.start()
    try:
        name = sock.getsockname()
        yield name[0], name[1]
    finally:
        stop.set()
        thread.join(timeout=2.0)
        sock.close()


# -- the process under test ------------------------------------------------------------------


def fd_count(pid: int) -> int:
    """Open file descriptors of process ``pid`` (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """The resident set (VmRSS) of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def problem_lines(lines: Iterable[str]) -> list[str]:
    """Log lines that mean a bug: a crashed or exited component, a failure caught and logged
    with a traceback, anything at level error or above."""
    return [
        line
        for line in lines
        if any(event in line for event in CRASH_EVENTS + FAILURE_EVENTS)
        or "level=error" in line
        or "level=critical" in line
        or "Traceback" in line
    ]


def is_restart(line: str) -> bool:
    """Whether a log line says a component crashed or exited (and is being restarted)."""
    return any(event in line for event in CRASH_EVENTS)


def exception_summary(line: str) -> str:
    """The exception at the end of a traceback logged on one line (``error=...`` with `` | ``
    between lines): e.g. ``ValueError: file descriptor cannot be a negative integer``."""
    parts = [p.strip().strip('"') for p in line.split(" | ") if p.strip()]
    found = [p for p in parts if ("Error" in p or "Exception" in p) and ": " in p]
    if found:
        return found[-1][:300]
    return parts[-1][:300] if parts else line[:300]
