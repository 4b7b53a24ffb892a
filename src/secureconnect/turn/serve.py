"""Thin trio I/O around :class:`~secureconnect.turn.core.TurnCore`.

One :class:`TurnServer` owns the TURN component's sockets: UDP listening sockets, TCP and TLS
listeners (through :class:`~secureconnect.transport.StreamAcceptor`) and one UDP relay socket
per allocation, bound by the :class:`~secureconnect.turn.udpplane.UdpDataPlane` (the core's
binder). It builds its :class:`TurnCore` from :class:`CoreParts` once its sockets are bound, with
everything the core needs (binder, own endpoints); nothing is set on the core afterwards.

The UDP data plane - the UDP listening sockets and the relay sockets of UDP clients' allocations -
is :mod:`secureconnect.turn.udpplane`, which knows nothing of trio: it runs in a thread of its own
on a level-triggered epoll (:mod:`secureconnect.turn.dataplane`: a trio wake-up per datagram cost
about 40% of our CPU per relayed datagram). TCP/TLS clients, their relay sockets (drained by the
plane's ``relay_drain`` from trio tasks) and the timers stay here, in trio. Both sides call into
the sans-IO core with one lock held: the data plane per ready socket (one drain, not per
datagram), trio's tasks through :meth:`TurnServer.locked`, which never blocks trio's thread (in
the all-in-one process that thread serves signaling and STUN too; docs/design.md, "Threads").

Resource handling: listening sockets are bound before ``task_status.started()``; relay sockets are
closed by the core's ``binder.close`` (expiry, Refresh 0, connection loss) and all of them when
``serve`` exits. A data-plane socket leaves the epoll set before it is closed; closing a trio-owned
relay socket wakes its loop via ``trio.lowlevel.notify_closing`` (from trio's thread). The
data-plane thread stops when ``serve`` exits, and an exception in it fails the component.

Error handling: send failures (ICMP errors queued on the socket, full buffers) are counted and
never end a loop. A TCP/TLS client whose writer cannot keep up has datagrams dropped and counted
(a queue bounded in bytes, filled without waiting), so one slow client never stalls a relay loop.

Scaling: every piece of state is keyed by a 5-tuple and lives in one process, so several worker
processes share the UDP listening ports with SO_REUSEPORT, each a TurnServer of its own with the
sockets it was given (``udp_sockets``) and the parent's quota book (docs/workers.md).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from secureconnect.stun import StunDecodeError
from secureconnect.stun.framing import StreamFramer
from secureconnect.transport import ListeningSockets, StreamComponent
from secureconnect.turn.allocation import (
    Address,
    Allocation,
    AllocationTable,
    FiveTuple,
    RelayBinder,
    RelayPortPool,
)
from secureconnect.turn.auth import Authenticator
from secureconnect.turn.core import ToPeer, TurnCore, TurnCounters, TurnSettings
from secureconnect.turn.dataplane import EpollThread
from secureconnect.turn.peerpolicy import OwnEndpoints, PeerPolicy
from secureconnect.turn.pyfastpath import RECV_SIZE
from secureconnect.turn.quotas import QuotaGate
from secureconnect.turn.sessions import allocation_records, end_allocations
from secureconnect.turn.settings import counter_samples
from secureconnect.turn.udpplane import UdpDataPlane, log_allocation_ended

STREAM_QUEUE_BYTES = 256 * 1024  # bytes queued to one TCP/TLS client before drops
TICK = 1.0  # seconds between expiry passes (and looks for the last allocation in a drain)


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


@dataclass(frozen=True, slots=True)
class CoreParts:
    """What a :class:`TurnCore` is built from, except what only the running server knows: its
    relay binder (the server's data plane) and its own bound endpoints. :meth:`TurnServer.serve`
    builds the core from these once its sockets are bound, so the core is complete from its
    first call and nothing is set on it from outside afterwards."""

    settings: TurnSettings
    auth: Authenticator
    peers: PeerPolicy
    #: the relay port range (``turn.relay_port_min``/``max``, or a worker's slice of it);
    #: None: the pool's default
    port_range: tuple[int, int] | None = None
    #: the quota book (None: one of the core's own; a worker's is the parent's, over a socket)
    quotas: QuotaGate | None = None

    def build(
        self, binder: RelayBinder, own_endpoints: OwnEndpoints, counters: TurnCounters
    ) -> TurnCore:
        """A fresh core: empty tables and port pool, the server's lasting counters; each
        allocation that ends is logged (``allocation-ended``)."""
        return TurnCore(
            self.settings,
            auth=self.auth,
            peers=self.peers,
            binder=binder,
            own_endpoints=own_endpoints,
            ports=RelayPortPool(*self.port_range) if self.port_range else None,
            counters=counters,
            quotas=self.quotas,
            on_ended=log_allocation_ended,
        )


@dataclass
class TurnServer(StreamComponent):
    """The TURN component's I/O; see the module docstring."""

    framing_error = StunDecodeError
    parts: CoreParts
    endpoints: TurnEndpoints
    idle_timeout: float = field(default=300.0, kw_only=True)  # TURN sessions idle longer
    #: silence allowed to a TCP/TLS connection that holds no allocation: a connection slot is
    #: for relaying, and idle ones held by a few addresses once locked everyone out
    unallocated_timeout: float = field(default=10.0, kw_only=True)
    clock: Callable[[], float] = time.monotonic  # timers; wall time only for auth
    name: str = "turn"
    #: UDP endpoints of the process's other services (the STUN component, the TURN workers'
    #: listeners): never relayed to. Read when ``serve`` starts.
    other_services: Sequence[Address] = ()
    #: UDP listening sockets bound already (a worker's share of a reuseport group,
    #: docs/workers.md): served instead of binding ``endpoints``' UDP ones
    udp_sockets: Sequence[socket.socket] = ()
    dropped_slow_client: int = 0
    _streams: dict[FiveTuple, StreamOutbox] = field(default_factory=dict)
    _relays: trio.Nursery | None = None
    #: held around every call into the core: the data-plane thread and trio's share it
    lock: threading.Lock = field(default_factory=threading.Lock)
    _token: trio.lowlevel.TrioToken | None = None
    _trio_thread: int = 0  # threading.get_ident() of trio's thread, set by serve
    #: worker threads waiting for ``lock`` on trio tasks' behalf, few: the rest queue in trio
    #: (a busy relay must not use up trio's default thread limiter, which DNS lookups share)
    _lock_waiters: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    #: counted across restarts (a restarted component builds a fresh core around them)
    counters: TurnCounters = field(default_factory=TurnCounters)
    #: the core of the running server, built by :meth:`serve` once bound (kept after it ends,
    #: for its tables' last state)
    core: TurnCore | None = field(default=None, init=False)
    #: a drain has begun and the last allocation has ended (``serve`` may return)
    _no_allocations: trio.Event = field(default_factory=trio.Event, init=False)
    udp: UdpDataPlane = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        udp = self.udp = UdpDataPlane(
            self.parts.settings, self.counters.relay, lock=self.lock, clock=self.clock
        )
        udp.stream_relay = self._start_stream_relay
        udp.close_elsewhere = self.close_trio_socket

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind everything, report started, serve until cancelled."""
        self._accept_scope = trio.CancelScope()
        self.udp.wall_offset = time.time() - self.clock()
        endpoints = self.endpoints
        bind_udp = endpoints.udp and not self.udp_sockets
        sockets = await ListeningSockets.open(
            self._acceptor,
            udp=[(ip, endpoints.port) for ip in endpoints.addresses] if bind_udp else (),
            addresses=endpoints.addresses,
            tcp_port=endpoints.port if endpoints.tcp else None,
            tls_port=endpoints.tls_port,
        )
        sockets.udp.update((sock.getsockname()[:2], sock) for sock in self.udp_sockets)
        self.bound[:] = sockets.bound()
        settings = self.parts.settings
        own_endpoints = OwnEndpoints(
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
        core = self.core = self.parts.build(self.udp, own_endpoints, self.counters)
        plane = self.udp.open(core, sockets.udp)
        try:
            async with trio.open_nursery() as relays:
                self._relays = relays
                relays.start_soon(self._tick_loop, core)
                relays.start_soon(self._run_plane, plane)
                async with trio.open_nursery() as connections:
                    with self._accept_scope:
                        async with trio.open_nursery() as nursery:
                            sockets.start_accepting(nursery, self._acceptor, connections)
                            # Serve until a drain even with no TCP/TLS listener to accept on
                            # (UDP only: turn.tcp and turn.tls off, or a UDP worker).
                            nursery.start_soon(trio.sleep_forever)
                            task_status.started()
                # Drained: no new client is accepted and new allocations are redirected or
                # refused (turn/redirect.py); those that exist relay until they end.
                await self._no_allocations.wait()  # set by the tick loop
                relays.cancel_scope.cancel()
        finally:
            self._relays = None
            self.udp.stop()  # the loop has returned already, unless serve failed before it ran
            self.udp.shutdown()
            await sockets.aclose()

    def begin_drain(self) -> None:
        """Stop accepting TCP/TLS clients and new allocations (redirected with 300 to an
        alternate server, or refused with 486); ``serve`` returns once the allocations that
        exist have ended (their clients deleted them, stopped refreshing, or closed their
        connection), or when the supervisor's drain deadline cancels it."""
        if self.core is not None:
            self.core.redirect.draining = True
        super().begin_drain()

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

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the lock shared with the data-plane thread without blocking trio's thread.

        Trio's thread also serves signaling and STUN in the all-in-one process: blocking it on
        the lock while the data plane drains a socket stalled them all (issue #13, item 3). Free,
        the lock is taken at once; held, it is waited for in a worker thread (abandon_on_cancel
        is False, so when the wait returns the lock is ours and released here, even if the
        task was cancelled meanwhile)."""
        lock = self.lock
        if not lock.acquire(blocking=False):
            await trio.to_thread.run_sync(lock.acquire, limiter=self._lock_waiters)
        try:
            yield
        finally:
            lock.release()

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
            core = self.core
            table = core.table if core is not None else AllocationTable()
            # The fast path counts what it relays itself: summed into a copy.
            counters = dataclasses.replace(self.counters, relay=self.udp.relay_counters())
            samples = counter_samples(counters, table)
            samples["turn_send_errors_total"] = self.udp.total_send_errors()
            samples["turn_draining"] = int(core is not None and core.redirect.draining)
        samples["turn_packet_errors_total"] = self.udp.packet_errors
        samples['turn_relay_dropped_total{reason="slow_client"}'] = self.dropped_slow_client
        samples.update(self.stream_counters.samples("turn_stream"))
        return samples

    def reload(self) -> None:
        """TLS contexts are fetched per connection and secrets live in the shared minter."""

    # -- the operator's commands (secureconnect.admin, docs/admin.md) ----------------------

    async def admin_sessions(self, user: str | None) -> list[dict[str, object]]:
        """This server's allocations (``user``'s only, if given), for ``secureconnect sessions``."""
        async with self.locked():
            core = self.core
            if core is None:
                return []
            now = self.clock()
            return allocation_records(
                core, now, now + self.udp.wall_offset, user=user, component=self.name
            )

    async def admin_kill(
        self, *, user: str | None = None, allocation: str | None = None, peer: str | None = None
    ) -> int:
        """End ``user``'s allocations, or the one relaying from ``allocation``; a signaling
        ``peer``'s are its user's (signaling mints its credentials with the peer id as the
        user, signal/ice.py). How many ended (reason ``killed``)."""
        return await self._end(user if user is not None else peer, allocation, "killed")

    async def admin_revoked(self, user: str | None) -> int:
        """``user`` was revoked (None: a revocation was lifted): its allocations end (reason
        ``revoked``); the authenticator already reads the new list."""
        return 0 if user is None else await self._end(user, None, "revoked")

    async def _end(self, user: str | None, relayed: str | None, reason: str) -> int:
        if user is None and relayed is None:
            return 0
        async with self.locked():
            core = self.core
            if core is None:
                return 0
            return end_allocations(core, self.clock(), user=user, relayed=relayed, reason=reason)

    # -- relay sockets ---------------------------------------------------------------------

    def _start_stream_relay(self, sock: socket.socket, allocation: Allocation) -> None:
        """Deliver a TCP/TLS client's relay socket in a trio task (its queue is trio's)."""
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
        drain = self.udp.relay_drain(sock, allocation, self._to_stream(allocation))
        try:
            while sock.fileno() >= 0:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError, ValueError):
                    return  # closed while (or before) waiting: the allocation was deleted
                async with self.locked():
                    drain(self.clock())
        except Exception:
            self.udp.packet_failed()

    def _to_stream(self, allocation: Allocation) -> Callable[[bytes], bool]:
        """Relayed data to a TCP/TLS client: its stream's queue, bounded in bytes."""
        outbox = self._streams[allocation.five_tuple]

        def deliver(out: bytes) -> bool:
            if outbox.put(out):
                return True
            self.dropped_slow_client += 1
            return False

        return deliver

    async def _tick_loop(self, core: TurnCore) -> None:
        while True:
            async with self.locked():
                # Follow the wall clock (NTP steps) for auth, without moving any timer.
                self.udp.wall_offset = time.time() - self.clock()
                try:
                    core.handle_timeout(self.clock())
                except Exception:  # a bug costs one tick, never every allocation
                    self.udp.packet_failed()
                if core.redirect.draining and not len(core.table):
                    self._no_allocations.set()
            await trio.sleep(TICK)

    # -- TCP and TLS clients ---------------------------------------------------------------

    async def handle_stream(
        self, stream: trio.abc.Stream, source: Address, local: Address, transport: str
    ) -> None:
        """One TCP/TLS client: a reader and a writer task; the allocation ends with it."""
        five_tuple: FiveTuple = (transport, source, local)
        core = self.core
        if core is None:  # pragma: no cover - connections are accepted only while serving
            return
        outbox = StreamOutbox()
        self._streams[five_tuple] = outbox
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outbox.write_to, stream)
                await self._read_stream(core, stream, five_tuple, outbox)
                nursery.cancel_scope.cancel()
        finally:
            self._streams.pop(five_tuple, None)
            outbox.send.close()
            with trio.CancelScope(shield=True):  # the allocation ends even when cancelled
                async with self.locked():
                    core.close_five_tuple(five_tuple, self.clock())

    async def _read_stream(
        self, core: TurnCore, stream: trio.abc.Stream, five_tuple: FiveTuple, outbox: StreamOutbox
    ) -> None:
        framer = StreamFramer()
        table = core.table
        while True:
            allocated = table.get(five_tuple) is not None
            timeout = self.idle_timeout if allocated else self.unallocated_timeout
            data = await self.receive_or_idle(stream, RECV_SIZE, timeout)
            if not data:
                return
            framer.feed(data)
            async with self.locked():  # the core is shared with the data-plane thread
                now = self.clock()
                while (frame := framer.next_frame()) is not None:
                    if frame[0] & 0x40:  # the framer passes STUN (0b00) and ChannelData (0b01)
                        self.udp.forward_channel_data(table.get(five_tuple), frame, now)
                        continue
                    out = core.handle_stun(frame, five_tuple, now, now + self.udp.wall_offset)
                    if type(out) is bytes:
                        if not outbox.put(out):
                            self.dropped_slow_client += 1
                    elif isinstance(out, ToPeer):
                        self.udp.send_to_peer(out)
