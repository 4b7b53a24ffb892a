"""The TURN server's UDP data plane, without trio: what a worker thread or process needs to relay.

:class:`UdpDataPlane` owns the UDP side of one TURN server: its listening sockets, the relay
sockets of allocations (it is the core's :class:`~secureconnect.turn.allocation.RelayBinder`),
and the :class:`~secureconnect.turn.dataplane.EpollThread` that drains them. It calls the
sans-IO :class:`~secureconnect.turn.core.TurnCore` with ``lock`` held, and imports nothing of
trio: ``turn.serve`` composes it with the trio side (TCP/TLS clients, timers), and anything else
can drive it from a plain thread (``tests/turn/test_udpplane.py`` does, in a process without
trio) - the seam for worker processes (issue #14).

Theory of operation:

- UDP clients' established traffic goes through the fast path (``turn.fastpath``: the compiled
  ``turn._fastpath`` or its pure-Python twin, docs/fastpath.md). A listening socket's drain reads
  up to ``BATCH`` datagrams per wake-up; the fast path relays ChannelData and plain Send
  indications of clients it knows and hands back everything else, which goes to the core, whose
  answer goes back to the client (or, for a Send indication, to the peer). A UDP client's relay
  socket is drained by the fast path alone. :meth:`UdpDataPlane.activate` gives each UDP
  allocation its :class:`~secureconnect.turn.fastpath.Mirror`, through which the allocation keeps
  the fast path's copy of it current.
- A TCP/TLS client's relay socket is drained by :meth:`UdpDataPlane.relay_drain`, which wraps each
  peer datagram (``relaypath.wrap_peer_data``) and hands it to whatever ``stream_relay``
  arranged (the trio side queues it on the stream).
- Sockets leave the epoll set before they close. A relay socket not in the set (a TCP/TLS
  client's, waited on by trio) is closed by ``close_elsewhere``.
- Failures: a send error is counted (``send_errors``); a datagram whose handling raises costs
  that datagram only (``packet_errors``, the first traceback logged).
- Accounting: each allocation that ends is logged once with its totals
  (:func:`log_allocation_ended`, the core's ``on_ended``; docs/metrics.md).

Wall time: the core wants Unix time for nonces and REST expiries; ``wall_offset`` (Unix time
minus ``clock()``) is kept current by whoever runs the timers, and each drain passes
``now + wall_offset`` along.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable

from secureconnect.logs import fields
from secureconnect.turn.allocation import Address, Allocation, AllocationEnded, RelayEndpoint
from secureconnect.turn.core import ToPeer, TurnCore, TurnSettings
from secureconnect.turn.dataplane import CompiledLoop, EpollThread, Handler, Unhandled
from secureconnect.turn.fastpath import Mirror, fastpath_reason, new_fastpath
from secureconnect.turn.pyfastpath import RECV_SIZE, PyFastPath, received
from secureconnect.turn.relaypath import RelayCounters, route_channel_data, wrap_peer_data

log = logging.getLogger("secureconnect.turn")
# Linux values (typeshed lacks the names): IP_MTU_DISCOVER/IPV6_MTU_DISCOVER and "always DF".
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
BATCH = 256  # datagrams handled per readiness wake-up before the next socket's turn
#: UDP receive buffers: the kernel default (~208 KiB) overflows under bursts; coturn uses 4 MiB.
#: Linux caps the request at net.core.rmem_max.
RCVBUF = 4 * 1024 * 1024
#: how relayed data reaches a client; False when it could not (counted by the caller)
Deliver = Callable[[bytes], bool]


class UdpDataPlane:
    """The UDP side of a TURN server; see the module docstring."""

    def __init__(
        self,
        settings: TurnSettings,
        counters: RelayCounters,
        *,
        lock: threading.Lock | None = None,
        clock: Callable[[], float] = time.monotonic,
        compiled: bool | None = None,
    ) -> None:
        self.settings = settings
        #: the relay counters, shared with the core (which counts what it relays itself)
        self.counters = counters
        #: the core served, between :meth:`open` and :meth:`shutdown`
        self.core: TurnCore | None = None
        #: transaction ids of Data indications (RFC 8489 §6: random, no secrecy needed)
        self.rng = random.Random(secrets.randbits(64))
        self.lock = lock or threading.Lock()
        self.clock = clock
        self.wall_offset = time.time() - clock()
        #: the epoll loop, between :meth:`open` and :meth:`shutdown` (a restarted component
        #: opens a new one; counters carry on)
        self.epoll: EpollThread | None = None
        self.listeners: dict[Address, socket.socket] = {}
        self.relay_sockets: set[socket.socket] = set()
        self.send_errors = 0
        self.packet_errors = 0
        #: called (lock held) for a TCP/TLS client's relay socket: the stream side delivers
        self.stream_relay: Callable[[socket.socket, Allocation], None] | None = None
        #: closes a relay socket that is not in the epoll set (a TCP/TLS client's)
        self.close_elsewhere: Callable[[socket.socket], None] = socket.socket.close
        #: one receive buffer for every drain (they run one at a time, under ``lock``):
        #: ``recvfrom_into`` saves the 64 KiB allocation ``recvfrom`` makes per datagram
        self._buffer = bytearray(RECV_SIZE)
        #: descriptor -> socket of the listening sockets and UDP clients' relay sockets: what
        #: the fast path drains and sends through
        self.sockets: dict[int, socket.socket] = {}
        #: UDP clients' established traffic, compiled or pure Python (``turn.fastpath``)
        self.fastpath = new_fastpath(self.sockets, compiled=compiled)

    # -- running -----------------------------------------------------------------------------

    def open(self, core: TurnCore, listeners: dict[Address, socket.socket]) -> EpollThread:
        """Start serving UDP clients of ``core`` (built with this plane as its binder) on
        ``listeners`` (local address -> bound socket); the epoll loop to
        :meth:`~EpollThread.run` in a thread of its own."""
        # The compiled fast path brings its own loop (turn/fastpath_loop.c); the twin runs
        # dataplane's Python loop.
        compiled = self.fastpath if isinstance(self.fastpath, CompiledLoop) else None
        epoll = self.epoll = EpollThread(self.lock, self.clock, compiled, BATCH)
        # Which fast path runs, and why (docs/fastpath.md): an operator's first question when
        # comparing figures.
        kind = "python" if isinstance(self.fastpath, PyFastPath) else "compiled"
        log.info("turn-fastpath", extra=fields(path=kind, reason=fastpath_reason(kind)))
        with self.lock:
            self.core = core
            for local, sock in listeners.items():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                self.listeners[local] = sock
                self.sockets[sock.fileno()] = sock
                unhandled = self._unhandled(core, sock, local)
                epoll.add(sock.fileno(), self._listener_drain(sock, unhandled), unhandled)
        return epoll

    def stop(self) -> None:
        """Make the epoll loop return soon (from any thread)."""
        if self.epoll is not None:
            self.epoll.stop()

    def shutdown(self) -> None:
        """Release every relay socket the core holds and the epoll, once the loop has returned
        (after :meth:`stop` and joining its thread; the listening sockets belong to whoever
        bound them)."""
        epoll = self.epoll
        if epoll is None:
            return
        with self.lock:
            if self.core is not None:
                self.core.close_all(self.clock())
            self.core = None
            self.epoll = None
            self.listeners.clear()
            self.sockets.clear()
        epoll.close()

    # -- the core's RelayBinder ----------------------------------------------------------------

    def bind(self, family: int, port: int, dont_fragment: bool) -> RelayEndpoint:
        settings = self.settings
        ip = settings.relay_ipv4 if family == 4 else settings.relay_ipv6
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            if family == 6:
                # An IPv6 relay never reaches IPv4 through mapped addresses (docs/security.md).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if dont_fragment:
                # RFC 8656 §7.2 DONT-FRAGMENT: set DF on datagrams sent to peers.
                if family == 4:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            sock.bind((ip, port))
        except BaseException:
            sock.close()
            raise
        self.relay_sockets.add(sock)
        return sock

    def activate(self, endpoint: RelayEndpoint, allocation: Allocation) -> None:
        """Deliver ``endpoint``'s datagrams to ``allocation``'s client (lock held)."""
        sock = _as_socket(endpoint)
        if allocation.five_tuple[0] == "udp":
            if self.epoll is None:  # pragma: no cover - UDP clients reach a running plane only
                raise RuntimeError("the UDP data plane is not open")
            # The fast path relays it from now on: a copy of its state that the allocation
            # keeps current (its budget lives there).
            fd = sock.fileno()
            _, client, local = allocation.five_tuple
            self.sockets[fd] = sock
            self.fastpath.add(fd, self.listeners[local].fileno(), client, allocation.budget)
            allocation.mirror = Mirror(self.fastpath, fd)
            self.epoll.add(fd, self._fast_relay_drain(fd))
        elif self.stream_relay is not None:
            self.stream_relay(sock, allocation)
        else:  # pragma: no cover - a TCP/TLS allocation needs a stream side
            raise RuntimeError("no stream side to deliver a TCP/TLS client's relayed data")

    def close(self, endpoint: RelayEndpoint) -> None:
        """Release a relay socket (lock held, from either thread)."""
        sock = _as_socket(endpoint)
        if sock not in self.relay_sockets:
            return
        self.relay_sockets.discard(sock)
        if self.sockets.pop(sock.fileno(), None) is not None:
            self.fastpath.remove(sock.fileno())
        if self.epoll is not None and self.epoll.remove(sock.fileno()):
            sock.close()  # out of the epoll set first: no event can name it any more
        else:
            self.close_elsewhere(sock)

    # -- drains ----------------------------------------------------------------------------------

    def relay_drain(self, sock: socket.socket, allocation: Allocation, deliver: Deliver) -> Handler:
        """Peer -> a TCP/TLS client (UDP clients' relay sockets are the fast path's): read up to
        BATCH datagrams from a relay socket and hand each wrapped one to ``deliver`` (lock
        held)."""
        counters = self.counters
        rng = self.rng
        buffer = self._buffer

        def drain(now: float) -> None:
            for data, peer in received(sock, buffer, BATCH):
                try:
                    out = wrap_peer_data(allocation, data, peer, now, counters, rng=rng)
                except Exception:  # a bug costs one datagram, never the component
                    self.packet_failed()
                    continue
                if out is not None and not deliver(out):
                    # Not relayed after all (a full stream queue, a failed send): the counters
                    # say what reached the client.
                    counters.to_client_packets -= 1
                    counters.to_client_bytes -= len(data)
                    allocation.to_client_packets -= 1
                    allocation.to_client_bytes -= len(data)

        return drain

    def forward_channel_data(self, allocation: Allocation | None, data: bytes, now: float) -> None:
        """Client -> peer: a TCP/TLS client's ChannelData message out of its allocation's relay
        socket (a UDP client's takes the fast path)."""
        counters = self.counters
        if allocation is None:
            counters.dropped_no_allocation += 1
            return
        channel = route_channel_data(allocation, data, now, counters)
        if channel is not None:
            try:
                allocation.relay.sendto(data[4 : 4 + ((data[2] << 8) | data[3])], channel.peer)
            except OSError:
                self.send_errors += 1

    def send_to_peer(self, out: ToPeer) -> None:
        """A Send indication's payload, out of the allocation's relay socket."""
        try:
            out.relay.sendto(out.data, out.peer)
        except OSError:
            self.send_errors += 1

    def packet_failed(self) -> None:
        """Count a datagram whose handling raised; log the first traceback only."""
        self.packet_errors += 1
        if self.packet_errors == 1:
            log.exception("packet-handling-failed")

    def _listener_drain(self, sock: socket.socket, unhandled: Unhandled) -> Handler:
        """Client -> server over UDP (lock held): the fast path relays established traffic
        (ChannelData, plain Send indications) and ``unhandled`` gets the rest. The compiled
        loop drains listening sockets itself and calls ``unhandled`` directly."""
        fd = sock.fileno()
        drain = self.fastpath.drain_listener

        def handler(now: float) -> None:
            try:
                left = drain(fd, now, BATCH)
            except Exception:  # a bug costs this batch, never the component
                self.packet_failed()
                return
            if left:
                unhandled(left, now)

        return handler

    def _unhandled(self, core: TurnCore, sock: socket.socket, local: Address) -> Unhandled:
        """What the fast path left of a listening socket's batch (every STUN request...) goes
        to the core, and its answers back to the client or on to a peer (lock held)."""
        handle = core.handle_stun
        sendto = sock.sendto

        def handler(left: list[tuple[bytes, Address]], now: float) -> None:
            wall_now = now + self.wall_offset
            for data, source in left:
                try:
                    out = handle(data, ("udp", source, local), now, wall_now)
                except Exception:  # a bug costs one datagram, never the component
                    self.packet_failed()
                    continue
                if type(out) is bytes:
                    try:
                        sendto(out, source)
                    except OSError:
                        self.send_errors += 1
                elif isinstance(out, ToPeer):
                    self.send_to_peer(out)

        return handler

    def _fast_relay_drain(self, fd: int) -> Handler:
        """Peer -> a UDP client: the fast path drains the relay socket ``fd`` (lock held)."""
        drain = self.fastpath.drain_relay

        def handler(now: float) -> None:
            try:
                drain(fd, now, BATCH)
            except Exception:  # a bug costs this batch, never the component
                self.packet_failed()

        return handler

    def relay_counters(self) -> RelayCounters:
        """The relay counters of the core and the I/O layer, plus the fast path's, summed (for
        metrics and tests; a copy)."""
        merged = dataclasses.replace(self.counters)
        for name, value in self.fastpath.counters().items():
            if name != "send_errors":
                setattr(merged, name, getattr(merged, name) + value)
        return merged

    def total_send_errors(self) -> int:
        """Failed sends, the fast path's included."""
        return self.send_errors + self.fastpath.counters()["send_errors"]


def log_allocation_ended(event: AllocationEnded) -> None:
    """The core's ``on_ended``: one line per allocation that ended, with its totals
    (docs/metrics.md); called with the lock held, once per allocation, never per datagram."""
    log.info("allocation-ended", extra=fields(**event.log_fields()))


def _as_socket(endpoint: RelayEndpoint) -> socket.socket:
    if not isinstance(endpoint, socket.socket):  # pragma: no cover - the binder made it
        raise TypeError("relay endpoint is not a socket")
    return endpoint
