"""The probe's blocking I/O: one client 5-tuple to the server over UDP, TCP or TLS, and the
STUN transaction on it (RFC 8489 §6.2).

Plain sockets and `ssl`, no event loop: a command line tool does one thing at a time. Every
wait has a deadline derived from the caller's timeout, so a silent server costs at most that.

* `UdpChannel` is a connected UDP socket (it hears only the server; an ICMP port unreachable
  becomes `ChannelError` "refused"); `UdpSocket` an unconnected one, for RFC 5780's tests where
  answers come from other addresses.
* `StreamChannel` is a TCP connection, optionally upgraded to TLS, cut into frames by the
  codec's `StreamFramer` (RFC 8489 §6.2.2 and RFC 8656 §12.5: STUN and ChannelData back to back).
* `transact` sends a request and waits for the response with the same transaction id,
  retransmitting over UDP as RFC 8489 §6.2.1 says: RTO 500 ms, doubled after each send, at most
  Rc = 7 sends. Over TCP/TLS the request is sent once (§6.2.2). STUN messages that are not the
  answer (Data indications, a late answer to an earlier request) go to ``inbox``.

Error handling: `NoAnswer` when the deadline passes, `ChannelError` when the socket fails
(refused, reset, closed, TLS alert). Replies are decoded with `decode_message_untrusted`;
anything that is not STUN is dropped.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from secureconnect.netaddr import Address, format_address
from secureconnect.probe.wire import decode_reply
from secureconnect.stun import MessageClass, StreamFramer, StunDecodeError, StunMessage

#: RFC 8489 §6.2.1: the initial retransmission timeout, and Rc, the most sends of one request.
RTO: Final = 0.5
MAX_SENDS: Final = 7
RECV_SIZE: Final = 65536
#: Messages kept in a transaction's ``inbox`` at most: a server flooding indications while we
#: wait costs memory up to this, then its messages are dropped.
MAX_INBOX: Final = 256


class NoAnswer(Exception):
    """No answer before the deadline."""


class ChannelError(Exception):
    """The connection failed; the message says how, in the operator's words."""


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there, or a firewall rejects it)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


class Channel:
    """One client 5-tuple to the server (see the module docstring)."""

    reliable = False  # True over TCP/TLS: requests are sent once

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def receive(self, deadline: float) -> bytes | None:
        """The next frame or datagram, or None when ``deadline`` (monotonic) passes first."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def local(self) -> Address:
        raise NotImplementedError


class UdpChannel(Channel):
    """A UDP socket connected to the server."""

    def __init__(self, server: Address) -> None:
        self.sock = socket.socket(_family(server[0]), socket.SOCK_DGRAM)
        try:
            self.sock.connect(server)
        except OSError as exc:
            self.sock.close()
            raise ChannelError(_describe(exc)) from None
        self.sock.setblocking(False)

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:  # a full send buffer: a lost datagram, retransmitted later
            pass
        except OSError as exc:
            raise ChannelError(f"UDP send failed: {_describe(exc)}") from None

    def receive(self, deadline: float) -> bytes | None:
        while True:
            try:
                return self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                pass
            except ConnectionRefusedError:
                # Linux reports an ICMP port unreachable on the next call of a connected socket.
                raise ChannelError(
                    "refused: ICMP port unreachable (nothing listens on that UDP port)"
                ) from None
            except OSError as exc:
                raise ChannelError(_describe(exc)) from None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.sock], [], [], left)

    def close(self) -> None:
        self.sock.close()

    @property
    def local(self) -> Address:
        name = self.sock.getsockname()
        return name[0], name[1]


class StreamChannel(Channel):
    """A TCP connection (`connect`), optionally upgraded to TLS (`start_tls`)."""

    reliable = True

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout  # bounds a send that the server does not read
        self.framer = StreamFramer()
        self.frames: deque[bytes] = deque()
        self.tls_version: str | None = None
        self.cipher: str | None = None

    @classmethod
    def connect(cls, server: Address, timeout: float) -> tuple[StreamChannel, float]:
        """Connect (bounded by ``timeout``); the channel and the connect time in seconds."""
        start = time.monotonic()
        try:
            sock = socket.create_connection(server, timeout=timeout)
        except OSError as exc:
            raise ChannelError(
                f"TCP connect to {format_address(*server)}: {_describe(exc)}"
            ) from None
        elapsed = time.monotonic() - start
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout), elapsed

    def start_tls(self, context: ssl.SSLContext, server_hostname: str, timeout: float) -> float:
        """The TLS handshake (bounded by ``timeout``); its time in seconds. `ssl.SSLError`
        (verification failures included) propagates for the caller to report; the connection
        is closed then."""
        self.sock.settimeout(timeout)
        start = time.monotonic()
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException:
            self.sock.close()
            raise
        elapsed = time.monotonic() - start
        if isinstance(self.sock, ssl.SSLSocket):
            self.tls_version = self.sock.version()
            cipher = self.sock.cipher()
            self.cipher = cipher[0] if cipher else None
        return elapsed

    def peer_certificate(self) -> bytes | None:
        """The server's certificate (DER) after `start_tls`, verified or not."""
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.getpeercert(binary_form=True)
        return None

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as exc:
            why = _describe(exc) if isinstance(exc, OSError) else str(exc)
            raise ChannelError(f"send failed: {why}") from None

    def receive(self, deadline: float) -> bytes | None:
        while not self.frames:
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
            left = deadline - time.monotonic()
            if not pending and (left <= 0 or not select.select([self.sock], [], [], left)[0]):
                return None
            try:
                self.sock.settimeout(max(left, 0.001))
                data = self.sock.recv(RECV_SIZE)
            except ssl.SSLWantReadError:
                continue
            except (OSError, ValueError) as exc:
                why = _describe(exc) if isinstance(exc, OSError) else str(exc)
                raise ChannelError(f"receive failed: {why}") from None
            if not data:
                raise ChannelError("the server closed the connection")
            try:
                self.framer.feed(data)
                self.frames.extend(self.framer.frames())
            except StunDecodeError:
                raise ChannelError(
                    "the server sent bytes that are neither STUN nor ChannelData"
                ) from None
        return self.frames.popleft()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def local(self) -> Address:
        name = self.sock.getsockname()
        return name[0], name[1]


@dataclass(frozen=True, slots=True)
class Exchange:
    """A transaction's answer: the response, the round trip from the last send, the sends."""

    reply: StunMessage
    rtt: float
    sends: int


def transact(
    channel: Channel,
    tid: bytes,
    data: bytes,
    timeout: float,
    *,
    accept: Callable[[StunMessage], bool] | None = None,
    inbox: list[StunMessage] | None = None,
) -> Exchange:
    """Send request ``data`` (transaction ``tid``) and wait up to ``timeout`` s for its
    response (see the module docstring). ``accept`` may reject a response with our transaction
    id (a forged MESSAGE-INTEGRITY): it is dropped and the wait goes on (RFC 8489 §9.2.5)."""
    start = time.monotonic()
    deadline = start + timeout
    sends = 0
    next_send = start
    last_send = start
    rto = RTO
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise NoAnswer(f"no answer in {timeout:g} s ({sends} sent)")
        if sends == 0 or (not channel.reliable and sends < MAX_SENDS and now >= next_send):
            channel.send(data)
            sends += 1
            last_send = now
            next_send = now + rto
            rto *= 2
        wait_until = (
            deadline if channel.reliable or sends >= MAX_SENDS else min(deadline, next_send)
        )
        frame = channel.receive(wait_until)
        if frame is None:
            continue
        reply = decode_reply(frame)
        if reply is None:
            continue
        if reply.transaction_id == tid and reply.cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            if accept is None or accept(reply):
                return Exchange(reply, time.monotonic() - last_send, sends)
        elif inbox is not None and len(inbox) < MAX_INBOX:
            inbox.append(reply)


class UdpSocket:
    """An unconnected UDP socket: RFC 5780's tests send to several server addresses and need
    to see which address each answer came from."""

    def __init__(self, local: Address) -> None:
        self.sock = socket.socket(_family(local[0]), socket.SOCK_DGRAM)
        try:
            self.sock.bind(local)
        except OSError as exc:
            self.sock.close()
            raise ChannelError(f"cannot bind {format_address(*local)}: {_describe(exc)}") from None
        self.sock.setblocking(False)

    @property
    def local(self) -> Address:
        name = self.sock.getsockname()
        return name[0], name[1]

    def sendto(self, data: bytes, server: Address) -> None:
        try:
            self.sock.sendto(data, server)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise ChannelError(f"UDP send failed: {_describe(exc)}") from None

    def receive_from(self, deadline: float) -> tuple[bytes, Address] | None:
        """The next datagram and its source, or None at ``deadline``; ICMP errors (an
        unconnected socket may still get them) are ignored: another test's answer may follow."""
        while True:
            try:
                data, source = self.sock.recvfrom(RECV_SIZE)
                return data, (source[0], source[1])
            except BlockingIOError:
                pass
            except OSError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.sock], [], [], left)

    def close(self) -> None:
        self.sock.close()


def local_address_towards(server: Address) -> str:
    """The local IP the routing table picks to reach ``server`` (a connected UDP socket sends
    nothing, it only asks the kernel for a route)."""
    with socket.socket(_family(server[0]), socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(server)
        except OSError as exc:
            raise ChannelError(f"no route to {format_address(*server)}: {_describe(exc)}") from None
        return str(probe.getsockname()[0])
