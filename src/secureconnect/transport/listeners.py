"""Listening sockets and the accept loop (thin trio I/O; the transport layer the components
share, issue #13).

:func:`udp_socket` binds a non-blocking UDP socket or raises :class:`BindError`;
:func:`open_tcp_listeners` (STUN, TURN and signaling) and :meth:`ListeningSockets.open` (STUN and
TURN) bind on every address they are given, all or nothing.

:class:`StreamAcceptor` (STUN and TURN) accepts connections within
:class:`~secureconnect.transport.caps.ConnectionCaps` (in total and per client address; refusals
counted by cap), runs the TLS handshake by a deadline counted from accept and hands each
connection to the component's ``handler`` coroutine ``handler(stream, source, local,
transport)``. TCP and TLS are capped separately (``max_connections`` and ``max_per_ip`` apply to
each), so filling one transport leaves the other - TURN over TLS on 443 is the last resort of
firewalled users - available. Signaling admits its connections with the same caps, in
:mod:`secureconnect.signal.serve_admission` (websockets runs its accept loop and its TLS).

Resource handling: every accepted stream is closed when its handler returns, however it returns,
and its slots are given back; a failed bind closes whatever was bound and raises one
:class:`BindError` naming every address that failed.

Error handling: a peer that resets, sends bytes that cannot be framed (the component's
``framing_error``, e.g. ``StunDecodeError``),
stalls its TLS handshake or fails it is counted and closed; nothing propagates to other
connections or to the accept loop. Out of descriptors, the accept loop backs off instead of
spinning.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import trio

from secureconnect.netaddr import Address, format_address
from secureconnect.transport.caps import ConnectionCaps, Ticket

log = logging.getLogger("secureconnect.listeners")
Handler = Callable[[trio.abc.Stream, Address, Address, str], Awaitable[None]]


class BindError(OSError):
    """Sockets could not be bound; ``strerror`` names the transport, address and port of each
    that failed ("cannot bind udp 127.0.0.1:3478: Address already in use; ..."), ``errno`` is
    the first failure's."""

    @classmethod
    def raise_for(cls, failures: Sequence[BindError]) -> None:
        """Raise one error naming every failed bind, if there was any."""
        if len(failures) == 1:
            raise failures[0]
        if failures:
            error = cls(failures[0].errno, "; ".join(str(f.strerror) for f in failures))
            raise error from failures[0].__cause__


#: why StreamAcceptor refused a connection at accept (``StreamCounters.refused`` keys)
OVER_CAP, PER_IP = "over_cap", "per_ip"


@dataclass(slots=True)
class StreamCounters:
    """Connection-level counters for TCP/TLS clients (both transports together)."""

    accepted: int = 0
    idle_closed: int = 0
    handshake_failed: int = 0
    framing_errors: int = 0
    handler_failures: int = 0
    open: int = 0
    #: connections closed at accept, by the cap they would exceed (counted by the caps)
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys((OVER_CAP, PER_IP), 0))

    @property
    def refused_over_cap(self) -> int:
        """Refused because the transport held ``max_connections``."""
        return self.refused[OVER_CAP]

    @property
    def refused_per_ip(self) -> int:
        """Refused because the client address held ``max_per_ip`` on that transport."""
        return self.refused[PER_IP]

    def samples(self, prefix: str) -> dict[str, float]:
        """Prometheus samples: ``{prefix}_connections`` (open) and a ``{prefix}_NAME_total``
        per counter (``refused_over_cap``, ``refused_per_ip``, ``accepted``, ...)."""
        return {
            f"{prefix}_connections": self.open,
            f"{prefix}_accepted_total": self.accepted,
            f"{prefix}_refused_over_cap_total": self.refused_over_cap,
            f"{prefix}_refused_per_ip_total": self.refused_per_ip,
            f"{prefix}_idle_closed_total": self.idle_closed,
            f"{prefix}_handshake_failed_total": self.handshake_failed,
            f"{prefix}_framing_errors_total": self.framing_errors,
            f"{prefix}_handler_failures_total": self.handler_failures,
        }


@dataclass
class StreamAcceptor:
    """Accept loop, connection cap and TLS handshake for one component; see the module doc."""

    handler: Handler
    tls_context: Callable[[], ssl.SSLContext] | None = None
    max_connections: int = 1024
    #: connections one client address may hold, so that one host cannot take every slot of
    #: ``max_connections`` (TURN over TLS on 443 is the last resort of firewalled users)
    max_per_ip: int = 0  # 0: no per-address cap
    handshake_timeout: float = 10.0
    #: what the handler raises for bytes it cannot frame: counted, and only that one closes
    framing_error: type[Exception] = ValueError
    counters: StreamCounters = field(default_factory=StreamCounters)
    #: the caps per transport (False: TCP, True: TLS), counting refusals in ``counters``
    _caps: dict[bool, ConnectionCaps] = field(init=False)

    def __post_init__(self) -> None:
        self._caps = {
            tls: ConnectionCaps(
                self.max_connections,
                self.max_per_ip or None,
                total_reason=OVER_CAP,
                per_address_reason=PER_IP,
                refused=self.counters.refused,
            )
            for tls in (False, True)
        }

    async def accept_loop(
        self, listener: trio.SocketListener, tls: bool, connections: trio.Nursery
    ) -> None:
        """Accept until cancelled; each connection runs in ``connections``."""
        local = sockname(listener)
        counters = self.counters
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)  # out of descriptors: back off instead of spinning
                    continue
                raise
            try:
                peer = stream.socket.getpeername()
            except OSError:  # reset between accept and here
                await trio.aclose_forcefully(stream)
                continue
            source = (peer[0], peer[1])
            ticket = Ticket(trio.current_time() + self.handshake_timeout)
            if not ticket.take(source[0], self._caps[tls]):  # counted by the cap
                await trio.aclose_forcefully(stream)
                continue
            counters.accepted += 1
            counters.open += 1
            connections.start_soon(
                partial(self._serve_connection, stream, source, local, tls, ticket)
            )

    async def _serve_connection(
        self, raw: trio.SocketStream, source: Address, local: Address, tls: bool, ticket: Ticket
    ) -> None:
        counters = self.counters
        stream: trio.abc.Stream = raw
        handshaken = False
        try:
            if tls:
                secured = await self._tls_handshake(raw, ticket.deadline)
                if secured is None:
                    return
                stream = secured
            handshaken = True
            await self.handler(stream, source, local, "tls" if tls else "tcp")
        # except*: a handler that runs its own nursery (TURN's reader and writer) raises these
        # wrapped in an ExceptionGroup; none of them may escape and end the component.
        except* self.framing_error:
            counters.framing_errors += 1
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # A client that closes without close_notify after a good handshake is no failure.
            if not handshaken and any(
                isinstance(e.__cause__, ssl.SSLError) for e in group.exceptions
            ):
                counters.handshake_failed += 1
        except* OSError:
            pass  # peer reset: nothing to do but close
        except* Exception:
            # A bug in one connection's handling must not take the other sessions down.
            counters.handler_failures += 1
            log.exception("connection-handler-failed")
        finally:
            counters.open -= 1
            ticket.close()
            await trio.aclose_forcefully(stream)

    async def _tls_handshake(
        self, raw: trio.SocketStream, deadline: float
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The server side of a TLS handshake, done by ``deadline`` (``handshake_timeout`` after
        accept); None on timeout.

        The context is fetched per connection, so a SIGHUP-reloaded certificate applies to new
        connections at once.
        """
        if self.tls_context is None:  # TLS listeners are opened only with a context
            return None
        ssl_stream = trio.SSLStream(raw, self.tls_context(), server_side=True)
        with trio.move_on_at(deadline) as handshake:
            await ssl_stream.do_handshake()
        if handshake.cancelled_caught:
            self.counters.handshake_failed += 1
            await trio.aclose_forcefully(ssl_stream)
            return None
        return ssl_stream


def sockname(listener: trio.SocketListener) -> Address:
    name = listener.socket.getsockname()
    return (name[0], name[1])


async def open_tcp_listeners(addresses: Sequence[str], port: int) -> list[trio.SocketListener]:
    """TCP listeners on ``port`` of every address, all or none: every address is tried, and one
    :class:`BindError` names each that failed (an operator fixes them all in one go)."""
    listeners: list[trio.SocketListener] = []
    failures: list[BindError] = []
    try:
        for ip in addresses:
            try:
                listeners += await trio.open_tcp_listeners(port, host=ip)
            except OSError as exc:
                failures.append(_bind_error("listen on tcp", ip, port, exc))
        BindError.raise_for(failures)
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    return listeners


def _bind_error(what: str, ip: str, port: int, exc: OSError) -> BindError:
    where = format_address(ip, port)
    error = BindError(exc.errno, f"cannot {what} {where}: {exc.strerror}")
    error.__cause__ = exc
    return error


def udp_socket(ip: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to (ip, port); IPv6 sockets are IPv6-only. With
    ``reuse_port`` it joins the group of sockets sharing the port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((ip, port))
    except OSError as exc:
        sock.close()
        raise _bind_error("bind udp", ip, port, exc) from exc
    return sock


@dataclass(kw_only=True)
class StreamComponent:
    """What the STUN and TURN components share around their TCP/TLS listeners: the options, the
    :class:`StreamAcceptor` (serving each connection with :meth:`handle_stream`), the bound
    addresses, and the scope whose cancellation starts a drain."""

    tls_context: Callable[[], ssl.SSLContext] | None = None
    max_connections: int = 1024  # per transport (TCP and TLS each)
    max_connections_per_ip: int = 0  # per transport; 0: no per-address cap
    idle_timeout: float = 30.0
    handshake_timeout: float = 10.0
    bound: list[tuple[str, str, int]] = field(default_factory=list)  # (transport, ip, port)
    #: the handler's error for bytes that cannot be framed (STUN/TURN: ``StunDecodeError``)
    framing_error: ClassVar[type[Exception]] = ValueError
    _accept_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _acceptor: StreamAcceptor = field(init=False)

    def __post_init__(self) -> None:
        self._acceptor = StreamAcceptor(
            self.handle_stream,
            tls_context=self.tls_context,
            max_connections=self.max_connections,
            max_per_ip=self.max_connections_per_ip,
            handshake_timeout=self.handshake_timeout,
            framing_error=self.framing_error,
        )

    @property
    def stream_counters(self) -> StreamCounters:
        """Connection-level counters of the TCP/TLS listeners."""
        return self._acceptor.counters

    def begin_drain(self) -> None:
        """Stop accepting TCP/TLS connections, and end whatever else the component runs inside
        its accept scope; ``serve`` returns once the open connections have ended (their client
        closed, they went idle, or the supervisor's drain timeout cancelled them).

        STUN runs its UDP loops in that scope: it stops answering UDP at once. TURN runs its UDP
        data plane and its TCP/TLS clients' relays outside it, and refuses or redirects new
        allocations (``TurnServer.begin_drain``): every existing allocation keeps relaying until
        it ends, then ``serve`` returns."""
        self._accept_scope.cancel()

    async def handle_stream(
        self, stream: trio.abc.Stream, source: Address, local: Address, transport: str
    ) -> None:
        """Serve one accepted (and, for TLS, handshaken) connection."""
        raise NotImplementedError

    async def receive_or_idle(
        self, stream: trio.abc.Stream, size: int, silence: float | None = None
    ) -> bytes | bytearray:
        """The client's next bytes (at most ``size``); ``b""`` at EOF, or after ``silence``
        (default ``idle_timeout``) seconds without any (counted as an idle close): either way
        the connection ends."""
        with trio.move_on_after(self.idle_timeout if silence is None else silence):
            return await stream.receive_some(size)
        self.stream_counters.idle_closed += 1
        return b""


@dataclass
class ListeningSockets:
    """A component's bound sockets: UDP by local address, TCP and TLS listeners."""

    udp: dict[Address, socket.socket] = field(default_factory=dict)
    tcp: list[trio.SocketListener] = field(default_factory=list)
    tls: list[trio.SocketListener] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        acceptor: StreamAcceptor,
        *,
        udp: Sequence[Address],
        addresses: Sequence[str],
        tcp_port: int | None,
        tls_port: int | None,
    ) -> ListeningSockets:
        """Bind UDP sockets on ``udp`` and TCP/TLS listeners on ``addresses`` (a None port:
        none of that kind); all or nothing: every socket is tried, and one :class:`BindError`
        names each that failed."""
        opened = cls()
        failures: list[BindError] = []
        try:
            for ip, port in udp:
                try:
                    sock = udp_socket(ip, port)
                except BindError as exc:
                    failures.append(exc)
                    continue
                opened.udp[sock.getsockname()[:2]] = sock
            if acceptor.tls_context is None:
                tls_port = None  # TLS listeners are opened only with a context
            for stream_port, listeners in ((tcp_port, opened.tcp), (tls_port, opened.tls)):
                if stream_port is None:
                    continue
                try:
                    listeners.extend(await open_tcp_listeners(addresses, stream_port))
                except BindError as exc:
                    failures.append(exc)
            BindError.raise_for(failures)
        except BaseException:
            await opened.aclose()
            raise
        return opened

    def bound(self) -> list[tuple[str, str, int]]:
        """(transport, ip, port) of every socket, for logs and service URLs."""
        return [
            *(("udp", ip, port) for ip, port in self.udp),
            *(("tcp", *sockname(listener)) for listener in self.tcp),
            *(("tls", *sockname(listener)) for listener in self.tls),
        ]

    def start_accepting(
        self, nursery: trio.Nursery, acceptor: StreamAcceptor, connections: trio.Nursery
    ) -> None:
        """Run an accept loop per listener in ``nursery``; connections go to ``connections``."""
        for listener in self.tcp:
            nursery.start_soon(acceptor.accept_loop, listener, False, connections)
        for listener in self.tls:
            nursery.start_soon(acceptor.accept_loop, listener, True, connections)

    async def aclose(self) -> None:
        """Close everything (waking any task blocked on a UDP socket)."""
        for sock in self.udp.values():
            trio.lowlevel.notify_closing(sock)
            sock.close()
        for listener in self.tcp + self.tls:
            await trio.aclose_forcefully(listener)
