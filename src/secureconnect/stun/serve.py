"""Thin trio I/O around the sans-IO :class:`~secureconnect.stun.responder.BindingResponder`.

One :class:`StunServer` owns every STUN socket of the component: UDP sockets (four of them when
RFC 5780 is on: primary/alternate IP x primary/alternate port, so a CHANGE-REQUEST can be answered
from the right one), TCP listeners and TLS listeners.

Resource handling: all sockets are bound before ``task_status.started()``, so "started" means
"listening" and a bind failure surfaces as :class:`BindError` before the supervisor reports ready.
Sockets are closed when ``serve`` exits, however it exits.

Error handling: the UDP loop never raises on bad input (the responder drops and counts); send
failures are counted. A stream connection that sends garbage, stalls in its TLS handshake or stays
idle is closed and counted; it never affects other connections. Connections beyond
``max_connections`` are closed right after accept.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import trio

from secureconnect.stun.framing import StreamFramer
from secureconnect.stun.message import StunDecodeError
from secureconnect.stun.responder import BindingResponder, StunCounters

Address = tuple[str, int]
UDP_BATCH = 256  # datagrams handled per readiness wake-up before yielding to other tasks
RECV_SIZE = 2048


class BindError(OSError):
    """A socket could not be bound; the message names the transport, address and port."""


@dataclass(slots=True)
class StreamCounters:
    """Connection-level counters for STUN over TCP/TLS."""

    accepted: int = 0
    refused_over_cap: int = 0
    idle_closed: int = 0
    handshake_failed: int = 0
    framing_errors: int = 0
    udp_send_errors: int = 0
    open: int = 0


@dataclass(slots=True)
class StunEndpoints:
    """Where to listen. ``alternate`` is (ip, port) for RFC 5780, used with exactly one address."""

    addresses: Sequence[str]
    port: int
    udp: bool = True
    tcp: bool = True
    tls_port: int | None = None
    alternate: Address | None = None


@dataclass
class StunServer:
    """The STUN component's I/O: see the module docstring."""

    responder: BindingResponder
    endpoints: StunEndpoints
    tls_context: Callable[[], ssl.SSLContext] | None = None
    max_connections: int = 1024
    idle_timeout: float = 30.0
    handshake_timeout: float = 10.0
    stream_counters: StreamCounters = field(default_factory=StreamCounters)
    name: str = "stun"
    bound: list[tuple[str, str, int]] = field(default_factory=list)  # (transport, ip, port)
    _accept_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def counters(self) -> StunCounters:
        """The responder's protocol counters (one object, shared with the responder)."""
        return self.responder.counters

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind everything, report started, serve until cancelled or drained."""
        self.bound.clear()
        self._accept_scope = trio.CancelScope()
        udp = self._bind_udp() if self.endpoints.udp else {}
        try:
            tcp = await self._open_listeners(self.endpoints.port) if self.endpoints.tcp else []
            tls: list[trio.SocketListener] = []
            if self.endpoints.tls_port is not None and self.tls_context is not None:
                tls = await self._open_listeners(self.endpoints.tls_port)
        except BaseException:
            for sock in udp.values():
                sock.close()
            raise
        self.bound += [("udp", *local) for local in udp]
        self.bound += [("tcp", *_sockname(lst)) for lst in tcp]
        self.bound += [("tls", *_sockname(lst)) for lst in tls]
        async with trio.open_nursery() as connections:
            try:
                with self._accept_scope:
                    async with trio.open_nursery() as nursery:
                        for local, sock in udp.items():
                            nursery.start_soon(self._udp_loop, sock, local, udp)
                        for listener in tcp:
                            nursery.start_soon(self._accept_loop, listener, False, connections)
                        for listener in tls:
                            nursery.start_soon(self._accept_loop, listener, True, connections)
                        task_status.started()
            finally:
                for sock in udp.values():
                    trio.lowlevel.notify_closing(sock)
                    sock.close()
                for listener in tcp + tls:
                    await trio.aclose_forcefully(listener)

    def begin_drain(self) -> None:
        """Stop answering UDP and accepting streams; open connections finish or time out."""
        self._accept_scope.cancel()

    def reload(self) -> None:
        """Nothing of its own to reload: TLS contexts are fetched per connection."""

    # -- UDP -----------------------------------------------------------------------------------

    def _bind_udp(self) -> dict[Address, socket.socket]:
        """Bind the UDP sockets: one per address, or the RFC 5780 square of four."""
        endpoints = self.endpoints
        wanted: list[Address] = [(ip, endpoints.port) for ip in endpoints.addresses]
        if endpoints.alternate is not None:
            primary_ip = endpoints.addresses[0]
            alt_ip, alt_port = endpoints.alternate
            wanted = [
                (primary_ip, endpoints.port),
                (primary_ip, alt_port),
                (alt_ip, endpoints.port),
                (alt_ip, alt_port),
            ]
        sockets: dict[Address, socket.socket] = {}
        try:
            for ip, port in wanted:
                sock = _udp_socket(ip, port)
                sockets[sock.getsockname()[:2]] = sock
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        return sockets

    async def _udp_loop(
        self, sock: socket.socket, local: Address, by_address: dict[Address, socket.socket]
    ) -> None:
        """Wait for readability, then drain up to UDP_BATCH datagrams without a task switch."""
        handle = self.responder.handle
        recvfrom = sock.recvfrom
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(UDP_BATCH):
                try:
                    data, source = recvfrom(RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # e.g. a queued ICMP error; never fatal for a UDP server
                reply = handle(data, (source[0], source[1]), local)
                if reply is None:
                    continue
                out = sock
                if reply.response_origin is not None and reply.response_origin != local:
                    out = by_address.get(reply.response_origin, sock)
                try:
                    out.sendto(reply.data, reply.destination or source)
                except OSError:
                    self.stream_counters.udp_send_errors += 1

    # -- TCP and TLS ---------------------------------------------------------------------------

    async def _open_listeners(self, port: int) -> list[trio.SocketListener]:
        listeners: list[trio.SocketListener] = []
        try:
            for ip in self.endpoints.addresses:
                try:
                    listeners += await trio.open_tcp_listeners(port, host=ip)
                except OSError as exc:
                    raise BindError(
                        exc.errno, f"cannot listen on tcp {_fmt(ip, port)}: {exc.strerror}"
                    ) from exc
        except BaseException:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
        return listeners

    async def _accept_loop(
        self, listener: trio.SocketListener, tls: bool, connections: trio.Nursery
    ) -> None:
        local = _sockname(listener)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)  # out of descriptors: back off instead of spinning
                    continue
                raise
            if self.stream_counters.open >= self.max_connections:
                self.stream_counters.refused_over_cap += 1
                await trio.aclose_forcefully(stream)
                continue
            self.stream_counters.accepted += 1
            self.stream_counters.open += 1
            connections.start_soon(partial(self._serve_connection, stream, local, tls))

    async def _serve_connection(self, raw: trio.SocketStream, local: Address, tls: bool) -> None:
        """Serve one TCP/TLS connection until EOF, idle timeout or a framing error."""
        counters = self.stream_counters
        stream: trio.abc.Stream = raw
        try:
            peer = raw.socket.getpeername()
            source = (peer[0], peer[1])
            if tls:
                secured = await self._tls_handshake(raw)
                if secured is None:
                    return
                stream = secured
            await self._answer_frames(stream, source, local)
        except StunDecodeError:
            counters.framing_errors += 1
        except trio.BrokenResourceError as exc:
            if tls and isinstance(exc.__cause__, ssl.SSLError):
                counters.handshake_failed += 1
        except OSError:
            pass  # peer reset: nothing to do but close
        finally:
            counters.open -= 1
            await trio.aclose_forcefully(stream)

    async def _tls_handshake(
        self, raw: trio.SocketStream
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The server side of a TLS handshake, bounded by ``handshake_timeout``; None on timeout.

        The context is fetched per connection, so a SIGHUP-reloaded certificate applies to new
        connections at once.
        """
        if self.tls_context is None:  # serve() opens TLS listeners only with a context
            return None
        ssl_stream = trio.SSLStream(raw, self.tls_context(), server_side=True)
        with trio.move_on_after(self.handshake_timeout) as handshake:
            await ssl_stream.do_handshake()
        if handshake.cancelled_caught:
            self.stream_counters.handshake_failed += 1
            await trio.aclose_forcefully(ssl_stream)
            return None
        return ssl_stream

    async def _answer_frames(
        self, stream: trio.abc.Stream, source: Address, local: Address
    ) -> None:
        """Read STUN frames and answer each; returns on EOF or idle timeout."""
        framer = StreamFramer()
        handle = self.responder.handle
        while True:
            with trio.move_on_after(self.idle_timeout) as idle:
                data = await stream.receive_some(RECV_SIZE)
            if idle.cancelled_caught:
                self.stream_counters.idle_closed += 1
                return
            if not data:
                return
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                reply = handle(frame, source, local, stream=True)
                if reply is not None:
                    await stream.send_all(reply.data)


def _udp_socket(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(False)
        sock.bind((ip, port))
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, f"cannot bind udp {_fmt(ip, port)}: {exc.strerror}") from exc
    return sock


def _sockname(listener: trio.SocketListener) -> Address:
    name = listener.socket.getsockname()
    return (name[0], name[1])


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
