"""Thin trio I/O around :class:`~secureconnect.turn.core.TurnCore`.

One :class:`TurnServer` owns the TURN component's sockets: UDP listening sockets, TCP and TLS
listeners (through :class:`~secureconnect.transport.StreamAcceptor`) and one UDP relay
socket per allocation (bound through :class:`UdpRelayBinder`, which the core calls).

The UDP data plane - the UDP listening sockets and the relay sockets of UDP clients' allocations -
runs in a thread of its own on a level-triggered epoll (:mod:`secureconnect.turn.dataplane`: a
trio wake-up per datagram cost about 40% of our CPU per relayed datagram); TCP/TLS clients, their
relay sockets and the timers stay in trio. Both sides call into the sans-IO core with one lock
held (the data plane once per epoll wake-up, not per datagram). Every drain reads up to ``BATCH``
datagrams with non-blocking ``recvfrom`` per wake-up, reads the clock once per batch, logs
nothing, and counts drops.

Resource handling: listening sockets are bound before ``task_status.started()``; relay sockets are
closed by the core's ``binder.close`` (expiry, Refresh 0, connection loss) and all of them when
``serve`` exits. A data-plane socket leaves the epoll set before it is closed; closing a trio-owned
relay socket wakes its loop via ``trio.lowlevel.notify_closing``. The data-plane thread stops
when ``serve`` exits, and an exception in it fails the component.

Error handling: send failures (ICMP errors queued on the socket, full buffers) are counted and
never end a loop. A TCP/TLS client whose writer cannot keep up has datagrams dropped and counted
(a queue bounded in bytes, filled without waiting), so one slow client never stalls a relay loop.

Scaling: every piece of state is keyed by a 5-tuple and lives in one process, so several worker
processes can later share the listening ports with SO_REUSEPORT (one data-plane thread each).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from secureconnect.stun import StunDecodeError
from secureconnect.stun.framing import StreamFramer
from secureconnect.transport import ListeningSockets, StreamComponent
from secureconnect.turn.allocation import Address, Allocation, FiveTuple, RelayEndpoint
from secureconnect.turn.core import ToPeer, TurnCore
from secureconnect.turn.dataplane import EpollThread
from secureconnect.turn.peerpolicy import OwnEndpoints
from secureconnect.turn.relaypath import route_channel_data, wrap_peer_data

# Linux values (typeshed lacks the names): IP_MTU_DISCOVER/IPV6_MTU_DISCOVER and "always DF".
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
log = logging.getLogger("secureconnect.turn")
BATCH = 256  # datagrams handled per readiness wake-up before yielding to other tasks
RECV_SIZE = 65536  # a relayed UDP datagram may be up to 64 KiB
STREAM_QUEUE_BYTES = 256 * 1024  # bytes queued to one TCP/TLS client before drops
TICK = 1.0  # seconds between expiry passes
#: UDP receive buffers: the kernel default (~208 KiB) overflows under bursts; coturn uses 4 MiB.
#: Linux caps the request at net.core.rmem_max.
RCVBUF = 4 * 1024 * 1024


class StreamOutbox:
    """What waits to be written to one TCP/TLS client, bounded in bytes (not messages: 512
    relayed 64 KiB datagrams would be 32 MiB per client that never reads)."""

    __slots__ = ("limit", "queued", "receive", "send")

    def __init__(self, limit: int = STREAM_QUEUE_BYTES) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](math.inf)
        self.limit = limit
        self.queued = 0

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when the client is that far behind."""
        if self.queued + len(data) > self.limit:
            return False
        try:
            self.send.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.queued += len(data)
        return True

    async def write_to(self, stream: trio.abc.Stream) -> None:
        """Send queued messages, everything already waiting in one ``send_all`` (one syscall
        and, on TLS, one record instead of one per relayed datagram)."""
        async for message in self.receive:
            batch = [message]
            try:
                while True:
                    batch.append(self.receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                pass
            data = b"".join(batch) if len(batch) > 1 else message
            await stream.send_all(data)
            self.queued -= len(data)


@dataclass(slots=True)
class TurnEndpoints:
    """Where clients reach the TURN server."""

    addresses: tuple[str, ...]
    port: int
    udp: bool = True
    tcp: bool = True
    tls_port: int | None = None


class UdpRelayBinder:
    """The core's :class:`~secureconnect.turn.allocation.RelayBinder`: real UDP sockets."""

    def __init__(self, server: TurnServer) -> None:
        self._server = server
        self.sockets: set[socket.socket] = set()

    def bind(self, family: int, port: int, dont_fragment: bool) -> RelayEndpoint:
        settings = self._server.core.settings
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
        self.sockets.add(sock)
        return sock

    def activate(self, endpoint: RelayEndpoint, allocation: Allocation) -> None:
        self._server.start_relay(_as_socket(endpoint), allocation)

    def close(self, endpoint: RelayEndpoint) -> None:
        """Called by the core (lock held), from the data-plane thread or from trio's."""
        sock = _as_socket(endpoint)
        if sock not in self.sockets:
            return
        self.sockets.discard(sock)
        plane = self._server.plane
        if plane is not None and plane.remove(sock.fileno()):
            sock.close()  # out of the epoll set first: no event can name it any more
        else:
            self._server.close_trio_socket(sock)


def _as_socket(endpoint: RelayEndpoint) -> socket.socket:
    if not isinstance(endpoint, socket.socket):  # pragma: no cover - the binder made it
        raise TypeError("relay endpoint is not a socket")
    return endpoint


@dataclass
class TurnServer(StreamComponent):
    """The TURN component's I/O; see the module docstring."""

    framing_error = StunDecodeError
    core: TurnCore
    endpoints: TurnEndpoints
    idle_timeout: float = field(default=300.0, kw_only=True)  # TURN sessions idle longer
    #: silence allowed to a TCP/TLS connection that holds no allocation: a connection slot is
    #: for relaying, and idle ones held by a few addresses once locked everyone out
    unallocated_timeout: float = field(default=10.0, kw_only=True)
    clock: Callable[[], float] = time.monotonic  # timers; wall time only for auth
    #: Unix time minus ``clock()``, refreshed every tick (follows NTP steps): the core gets
    #: ``now + wall_offset`` as ``wall_now`` for nonces and REST expiries
    wall_offset: float = 0.0
    name: str = "turn"
    #: UDP endpoints of the process's other services (the STUN component): never relayed to
    other_services: tuple[Address, ...] = ()
    send_errors: int = 0
    dropped_slow_client: int = 0
    packet_errors: int = 0
    _udp: dict[Address, socket.socket] = field(default_factory=dict)
    _streams: dict[FiveTuple, StreamOutbox] = field(default_factory=dict)
    _relays: trio.Nursery | None = None
    #: held around every call into the core: the data-plane thread and trio's share it
    lock: threading.Lock = field(default_factory=threading.Lock)
    plane: EpollThread | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _trio_thread: int = 0  # threading.get_ident() of trio's thread, set by serve
    #: one receive buffer for every drain (they run one at a time, under ``lock``):
    #: ``recvfrom_into`` saves the 64 KiB allocation ``recvfrom`` makes per datagram
    _buffer: bytearray = field(default_factory=lambda: bytearray(RECV_SIZE))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.core.binder = UdpRelayBinder(self)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind everything, report started, serve until cancelled."""
        self._accept_scope = trio.CancelScope()
        self.wall_offset = time.time() - self.clock()
        endpoints = self.endpoints
        sockets = await ListeningSockets.open(
            self._acceptor,
            udp=[(ip, endpoints.port) for ip in endpoints.addresses] if endpoints.udp else (),
            addresses=endpoints.addresses,
            tcp_port=endpoints.port if endpoints.tcp else None,
            tls_port=endpoints.tls_port,
        )
        self.bound[:] = sockets.bound()
        self._udp = sockets.udp
        settings = self.core.settings
        self.core.own_endpoints = OwnEndpoints(
            [*sockets.udp, *self.other_services],
            local_ips=[
                ip
                for ip in (
                    settings.relay_ipv4,
                    settings.relay_ipv6,
                    settings.external_ipv4,
                    settings.external_ipv6,
                )
                if ip
            ],
        )
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        plane = self.plane = EpollThread(self.lock, self.clock)
        for local, sock in sockets.udp.items():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            plane.add(sock.fileno(), self._listener_drain(sock, local))
        try:
            async with trio.open_nursery() as relays:
                self._relays = relays
                relays.start_soon(self._tick_loop)
                relays.start_soon(self._run_plane, plane)
                async with trio.open_nursery() as connections:
                    with self._accept_scope:
                        async with trio.open_nursery() as nursery:
                            sockets.start_accepting(nursery, self._acceptor, connections)
                            task_status.started()
                relays.cancel_scope.cancel()
        finally:
            self._relays = None
            plane.stop()  # already returned unless serve failed before starting it
            with self.lock:
                self.core.close_all()
                self.plane = None
            plane.close()
            await sockets.aclose()

    async def _run_plane(self, plane: EpollThread) -> None:
        """Run the data-plane thread until this task is cancelled, then stop it and wait for
        it (``abandon_on_cancel=False``: the thread never outlives the component)."""

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                plane.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_cancelled)
            await trio.to_thread.run_sync(plane.run, abandon_on_cancel=False)
            nursery.cancel_scope.cancel()

    def close_trio_socket(self, sock: socket.socket) -> None:
        """Close a socket a trio task may be waiting on, from whichever thread holds the lock."""

        def close() -> None:
            trio.lowlevel.notify_closing(sock)
            sock.close()

        if self._token is not None and threading.get_ident() != self._trio_thread:
            self._token.run_sync_soon(close)  # the data-plane thread: trio's thread closes it
            return
        close()

    def metrics(self) -> dict[str, float]:
        """The core's samples plus this layer's send errors, slow-client drops and streams."""
        with self.lock:  # the data-plane thread changes the tables it counts
            samples = self.core.metrics()
        samples["turn_send_errors_total"] = self.send_errors
        samples["turn_packet_errors_total"] = self.packet_errors
        samples['turn_relay_dropped_total{reason="slow_client"}'] = self.dropped_slow_client
        samples["turn_stream_connections"] = self.stream_counters.open
        samples["turn_stream_accepted_total"] = self.stream_counters.accepted
        samples["turn_stream_refused_per_ip_total"] = self.stream_counters.refused_per_ip
        return samples

    def reload(self) -> None:
        """TLS contexts are fetched per connection and secrets live in the shared minter."""

    # -- relay sockets ---------------------------------------------------------------------

    def start_relay(self, sock: socket.socket, allocation: Allocation) -> None:
        """Start delivering ``sock``'s datagrams to ``allocation``'s client: in the data-plane
        thread for a UDP client, in a trio task for a TCP/TLS one (its queue is trio's)."""
        if allocation.five_tuple[0] == "udp" and self.plane is not None:
            self.plane.add(sock.fileno(), self._relay_drain(sock, allocation))
            return
        if self._relays is None:  # pragma: no cover - the core only allocates while serving
            raise RuntimeError("TURN server is not running")
        self._relays.start_soon(self._relay_loop, sock, allocation)

    async def _relay_loop(self, sock: socket.socket, allocation: Allocation) -> None:
        """Peer -> TCP/TLS client: drain the relay socket after each wake-up.

        The allocation may be deleted before this task first runs (an Allocate and a Refresh
        with LIFETIME 0 in one TCP segment are handled in one call): a closed socket ends the
        loop before and after every wait, and whatever goes wrong here ends this allocation's
        loop only, never the component (one client's input must not cost the others).
        """
        drain = self._relay_drain(sock, allocation)
        try:
            while sock.fileno() >= 0:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError, ValueError):
                    return  # closed while (or before) waiting: the allocation was deleted
                with self.lock:
                    drain(self.clock())
        except Exception:
            self._packet_failed()

    def _relay_drain(self, sock: socket.socket, allocation: Allocation) -> Callable[[float], None]:
        """Peer -> client: read up to BATCH datagrams from a relay socket (lock held)."""
        counters = self.core.counters.relay
        rng = self.core.rng
        recvfrom_into = sock.recvfrom_into
        buffer = self._buffer
        view = memoryview(buffer)
        deliver = self._client_sender(allocation)

        def drain(now: float) -> None:
            for _ in range(BATCH):
                try:
                    size, peer = recvfrom_into(buffer)
                    data = bytes(view[:size])
                except BlockingIOError:
                    return
                except OSError:
                    if sock.fileno() < 0:
                        return
                    continue  # a queued ICMP error from an earlier send
                if len(peer) > 2:
                    peer = peer[:2]  # IPv6: drop flow info and scope id
                try:
                    out = wrap_peer_data(allocation, data, peer, now, counters, rng=rng)
                except Exception:  # a bug costs one datagram, never the component
                    self._packet_failed()
                    continue
                if out is not None and not deliver(out):
                    # Not relayed after all (a full stream queue, a failed send): the counters
                    # say what reached the client (issue #12's slow-reader fault test).
                    counters.to_client_packets -= 1
                    counters.to_client_bytes -= len(data)

        return drain

    def _client_sender(self, allocation: Allocation) -> Callable[[bytes], bool]:
        """How relayed data reaches this allocation's client: its stream's bounded queue, or
        the UDP socket its requests arrived on. The sender says whether it went."""
        _, client, local = allocation.five_tuple
        outbox = self._streams.get(allocation.five_tuple)
        if outbox is not None:

            def to_stream(out: bytes) -> bool:
                if outbox.put(out):
                    return True
                self.dropped_slow_client += 1
                return False

            return to_stream
        sendto = self._udp[local].sendto

        def to_udp(out: bytes) -> bool:
            try:
                sendto(out, client)
            except OSError:
                self.send_errors += 1
                return False
            return True

        return to_udp

    def _forward_channel_data(self, allocation: Allocation | None, data: bytes, now: float) -> None:
        """Client -> peer: a ChannelData message out of its allocation's relay socket."""
        counters = self.core.counters.relay
        if allocation is None:
            counters.dropped_no_allocation += 1
            return
        channel = route_channel_data(allocation, data, now, counters)
        if channel is not None:
            try:
                allocation.relay.sendto(data[4 : 4 + ((data[2] << 8) | data[3])], channel.peer)
            except OSError:
                self.send_errors += 1

    def _packet_failed(self) -> None:
        """Count a datagram whose handling raised; log the first traceback only."""
        self.packet_errors += 1
        if self.packet_errors == 1:
            log.exception("packet-handling-failed")

    async def _tick_loop(self) -> None:
        while True:
            with self.lock:
                # Follow the wall clock (NTP steps) for auth, without moving any timer.
                self.wall_offset = time.time() - self.clock()
                try:
                    self.core.handle_timeout(self.clock())
                except Exception:  # a bug costs one tick, never every allocation
                    self._packet_failed()
            await trio.sleep(TICK)

    # -- UDP clients -----------------------------------------------------------------------

    def _listener_drain(self, sock: socket.socket, local: Address) -> Callable[[float], None]:
        """Client -> server over UDP, in the data-plane thread (lock held): ChannelData takes
        the fast path, the rest the core."""
        core = self.core
        allocations = core.table.udp_by_local.setdefault(local, {})
        recvfrom_into = sock.recvfrom_into
        buffer = self._buffer
        view = memoryview(buffer)
        sendto = sock.sendto
        forward = self._forward_channel_data
        v6 = sock.family == socket.AF_INET6

        def drain(now: float) -> None:
            wall_now = now + self.wall_offset
            for _ in range(BATCH):
                try:
                    size, source = recvfrom_into(buffer)
                    data = bytes(view[:size])
                except BlockingIOError:
                    return
                except OSError:
                    continue  # e.g. a queued ICMP error; never fatal for a UDP server
                if v6:
                    source = source[:2]
                try:
                    if data and data[0] >> 6 == 1:  # ChannelData (RFC 8656 §12)
                        forward(allocations.get(source), data, now)
                        continue
                    out = core.handle_stun(data, ("udp", source, local), now, wall_now)
                except Exception:  # a bug costs one datagram, never the component
                    self._packet_failed()
                    continue
                try:
                    if type(out) is bytes:
                        sendto(out, source)
                    elif isinstance(out, ToPeer):
                        out.relay.sendto(out.data, out.peer)
                except OSError:
                    self.send_errors += 1

        return drain

    # -- TCP and TLS clients ---------------------------------------------------------------

    async def handle_stream(
        self, stream: trio.abc.Stream, source: Address, local: Address, transport: str
    ) -> None:
        """One TCP/TLS client: a reader and a writer task; the allocation ends with it."""
        five_tuple: FiveTuple = (transport, source, local)
        outbox = StreamOutbox()
        self._streams[five_tuple] = outbox
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.write_to, stream)
                await self._read_stream(stream, five_tuple, outbox)
                nursery.cancel_scope.cancel()
        finally:
            self._streams.pop(five_tuple, None)
            outbox.send.close()
            with self.lock:
                self.core.close_five_tuple(five_tuple)

    async def _read_stream(
        self, stream: trio.abc.Stream, five_tuple: FiveTuple, outbox: StreamOutbox
    ) -> None:
        core = self.core
        framer = StreamFramer()
        table = core.table
        while True:
            allocated = table.get(five_tuple) is not None
            timeout = self.idle_timeout if allocated else self.unallocated_timeout
            data = await self.receive_or_idle(stream, RECV_SIZE, timeout)
            if not data:
                return
            framer.feed(data)
            with self.lock:  # the core is shared with the data-plane thread
                now = self.clock()
                while (frame := framer.next_frame()) is not None:
                    if frame[0] & 0x40:  # the framer passes STUN (0b00) and ChannelData (0b01)
                        self._forward_channel_data(core.table.get(five_tuple), frame, now)
                        continue
                    out = core.handle_stun(frame, five_tuple, now, now + self.wall_offset)
                    if type(out) is bytes:
                        if not outbox.put(out):
                            self.dropped_slow_client += 1
                    elif isinstance(out, ToPeer):
                        try:
                            out.relay.sendto(out.data, out.peer)
                        except OSError:
                            self.send_errors += 1
