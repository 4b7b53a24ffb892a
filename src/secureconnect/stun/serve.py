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
``max_connections`` (or ``max_connections_per_ip`` from one address) are closed right after accept
and counted (``stun_stream_refused_over_cap_total``, ``stun_stream_refused_per_ip_total``).

Drain (:meth:`~secureconnect.transport.StreamComponent.begin_drain`) stops the UDP loops and the
accept loops at once; open TCP/TLS connections finish or time out.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from secureconnect.netaddr import Address
from secureconnect.stun.framing import StreamFramer
from secureconnect.stun.message import StunDecodeError
from secureconnect.stun.responder import BindingResponder, StunCounters
from secureconnect.transport import ListeningSockets, StreamComponent

UDP_BATCH = 256  # datagrams handled per readiness wake-up before yielding to other tasks
RECV_SIZE = 2048


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
class StunServer(StreamComponent):
    """The STUN component's I/O: see the module docstring."""

    framing_error = StunDecodeError
    responder: BindingResponder
    endpoints: StunEndpoints
    name: str = "stun"
    udp_send_errors: int = 0  # failed UDP sends (ICMP errors queued on the socket, full buffers)

    @property
    def counters(self) -> StunCounters:
        """The responder's protocol counters (one object, shared with the responder)."""
        return self.responder.counters

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind everything, report started, serve until cancelled or drained."""
        self._accept_scope = trio.CancelScope()
        endpoints = self.endpoints
        sockets = await ListeningSockets.open(
            self._acceptor,
            udp=self._udp_addresses() if endpoints.udp else (),
            addresses=endpoints.addresses,
            tcp_port=endpoints.port if endpoints.tcp else None,
            tls_port=endpoints.tls_port,
        )
        self.bound[:] = sockets.bound()
        udp = sockets.udp
        try:
            async with trio.open_nursery() as connections:
                with self._accept_scope:
                    async with trio.open_nursery() as nursery:
                        for local, sock in udp.items():
                            nursery.start_soon(self._udp_loop, sock, local, udp)
                        sockets.start_accepting(nursery, self._acceptor, connections)
                        task_status.started()
        finally:
            await sockets.aclose()

    def metrics(self) -> dict[str, float]:
        """Protocol and connection counters as Prometheus samples (``stun_*``)."""
        samples: dict[str, float] = {
            f"stun_{name}_total": value for name, value in dataclasses.asdict(self.counters).items()
        }
        samples["stun_udp_send_errors_total"] = self.udp_send_errors
        samples.update(self.stream_counters.samples("stun_stream"))
        return samples

    def reload(self) -> None:
        """Nothing of its own to reload: TLS contexts are fetched per connection."""

    # -- UDP -----------------------------------------------------------------------------------

    def _udp_addresses(self) -> list[Address]:
        """The UDP sockets to bind: one per address, or the RFC 5780 square of four."""
        endpoints = self.endpoints
        if endpoints.alternate is None:
            return [(ip, endpoints.port) for ip in endpoints.addresses]
        primary_ip = endpoints.addresses[0]
        alt_ip, alt_port = endpoints.alternate
        return [
            (primary_ip, endpoints.port),
            (primary_ip, alt_port),
            (alt_ip, endpoints.port),
            (alt_ip, alt_port),
        ]

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
                if reply.response_origin != local:
                    out = by_address.get(reply.response_origin, sock)
                try:
                    out.sendto(reply.data, reply.destination or source)
                except OSError:
                    self.udp_send_errors += 1

    # -- TCP and TLS ---------------------------------------------------------------------------

    async def handle_stream(
        self, stream: trio.abc.Stream, source: Address, local: Address, transport: str
    ) -> None:
        """Read STUN frames and answer each; returns on EOF or idle timeout."""
        framer = StreamFramer()
        handle = self.responder.handle
        while True:
            data = await self.receive_or_idle(stream, RECV_SIZE)
            if not data:
                return
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                reply = handle(frame, source, local, stream=True)
                if reply is not None:
                    # A client that never reads must not pin this task: same deadline as idle.
                    with trio.move_on_after(self.idle_timeout) as sending:
                        await stream.send_all(reply.data)
                    if sending.cancelled_caught:
                        self.stream_counters.idle_closed += 1
                        return
