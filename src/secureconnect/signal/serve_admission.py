"""Admission control on the signaling port: caps on open connections, unfinished handshakes and
WebSockets per client address.

Why: a connection costs descriptors and memory (TLS state, buffers, websockets' protocol
objects: about 66 KiB over TLS) from accept on, long before its HTTP request says who it is.
Counting only upgraded WebSockets per address let one host hold 20,000 half-open connections
(1.3 GB, the descriptors, new clients timing out). So, at accept:

* ``max_connections`` caps the TCP connections open at once (handshakes, HTTP, WebSockets);
* ``max_pending`` caps connections that have not sent their HTTP request yet, in total, and
  ``max_pending_per_ip`` per client address (a trusted proxy's address is held to the total
  only: its clients share it);
* a connection over a cap is closed at once and counted (``signal_connections_refused_total``
  by reason); one that has not sent its request within ``handshake_timeout`` seconds of accept is
  closed and counted (``signal_handshake_timeouts_total``).

Once its request is in, a WebSocket upgrade takes a slot of the cap per client address (the
address :func:`~secureconnect.signal.http.client_address` decides, so a trusted proxy's clients
are told apart) until its handler has ended; over that cap it is answered 429 and counted as
``signal_connections_refused_total{reason="websockets-per-ip"}``.

How: the caps and their refusal counts are :class:`~secureconnect.transport.ConnectionCaps`, the
same as STUN's and TURN's, and what a connection holds is a
:class:`~secureconnect.transport.Ticket`. What is signaling's own is the glue to websockets, which
runs the accept loop, the TLS handshake and the HTTP request itself: :class:`GuardedListener`
wraps each accepted stream in :class:`_Tracked`, which holds the ticket and closes it when the
stream is closed, however that happens (or when it is garbage-collected, as a backstop);
:class:`GuardedConnection` is the ``ServerConnection`` websockets creates for it: it waits for the
request until the ticket's deadline and gives back the handshake slot once the request is in.

Memory: a connection in its handshake costs about 66 KiB over TLS (22 KiB without), so the
default caps bound a flood at roughly 70 MB, which the allocator keeps for the next burst rather
than returning (measured: ``gc.collect()`` and glibc ``malloc_trim(0)`` gave back under 3 MB
of it, so neither is called).
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.trio.server import ServerConnection

from secureconnect.transport import ConnectionCaps, Network, Ticket

#: ``signal_connections_refused_total`` reasons, one per cap
REASONS = ("connections", "pending", "pending-per-ip", "websockets-per-ip")


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The caps of the module docstring (``signal.*`` keys; defaults in config/schema.py)."""

    max_connections: int
    max_pending: int
    max_pending_per_ip: int
    handshake_timeout: float
    exempt: tuple[Network, ...] = ()  # trusted proxies: no per-address handshake cap


@dataclass
class Admission:
    """The caps of the module docstring and their counts."""

    limits: AdmissionLimits
    #: WebSockets one client address may hold (``signal.max_connections_per_ip``)
    max_websockets_per_ip: int | None = None
    timeouts: int = 0
    #: refusals by reason (:data:`REASONS`), counted by the caps
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    connections: ConnectionCaps = field(init=False)
    pending: ConnectionCaps = field(init=False)
    websockets: ConnectionCaps = field(init=False)

    def __post_init__(self) -> None:
        limits, refused = self.limits, self.refused
        self.connections = ConnectionCaps(
            limits.max_connections, total_reason="connections", refused=refused
        )
        self.pending = ConnectionCaps(
            limits.max_pending,
            limits.max_pending_per_ip,
            total_reason="pending",
            per_address_reason="pending-per-ip",
            exempt=limits.exempt,
            refused=refused,
        )
        self.websockets = ConnectionCaps(
            None,
            self.max_websockets_per_ip,
            per_address_reason="websockets-per-ip",
            refused=refused,
        )

    def admit(self, ip: str) -> Ticket | None:
        """At accept: a ticket holding a connection slot and a handshake slot, its deadline
        ``handshake_timeout`` from now; None when refused (counted)."""
        ticket = Ticket(trio.current_time() + self.limits.handshake_timeout)
        return ticket if ticket.take(ip, self.connections, self.pending) else None

    def admit_websocket(self, connection: ServerConnection, client: str) -> bool:
        """Once the request is in: a WebSocket slot for ``client`` on the connection's ticket
        (given back by :meth:`end_websocket` or when the stream closes); False (counted) when
        ``client`` holds as many as it may."""
        return _ticket_of(connection.stream).take(client, self.websockets)

    def end_websocket(self, connection: ServerConnection) -> None:
        """The WebSocket handler has ended: give back its slot."""
        _ticket_of(connection.stream).give_back(self.websockets)

    def metrics(self) -> dict[str, float]:
        samples: dict[str, float] = {
            "signal_tcp_connections": self.connections.held,
            "signal_handshakes_pending": self.pending.held,
            "signal_handshake_timeouts_total": self.timeouts,
        }
        for reason, count in self.refused.items():
            samples[f'signal_connections_refused_total{{reason="{reason}"}}'] = count
        return samples


class _Tracked(trio.abc.HalfCloseableStream):
    """An accepted TCP stream holding its :class:`~secureconnect.transport.Ticket` until it is
    closed."""

    def __init__(self, inner: trio.SocketStream, admission: Admission, ticket: Ticket) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.admission = admission
        self.ticket = ticket
        self._release = weakref.finalize(self, ticket.close)  # a backstop: aclose releases

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._release()
        await self.inner.aclose()


class GuardedListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts within the caps; wraps each stream in TLS with the context current at accept time
    (the TLS handshake is lazy, so it runs under the handshake deadline)."""

    def __init__(
        self,
        inner: trio.SocketListener,
        admission: Admission,
        context: Callable[[], ssl.SSLContext] | None,
    ) -> None:
        self.inner = inner
        self.socket = inner.socket  # websockets logs the listening address from it
        self.admission = admission
        self._context = context

    async def accept(self) -> trio.abc.Stream:
        while True:
            stream = await self.inner.accept()
            try:
                ip = str(stream.socket.getpeername()[0])
            except OSError:  # reset between accept and here
                ip = ""
            ticket = self.admission.admit(ip) if ip else None
            if ticket is None:
                await trio.aclose_forcefully(stream)
                continue
            tracked = _Tracked(stream, self.admission, ticket)
            if self._context is None:
                return tracked
            return trio.SSLStream(tracked, self._context(), server_side=True, https_compatible=True)

    async def aclose(self) -> None:
        await self.inner.aclose()


class GuardedConnection(ServerConnection):
    """websockets' server connection over a :class:`_Tracked` stream: the request must arrive by
    the ticket's deadline, and the handshake slot is released as soon as it has."""

    @property
    def local_address(self) -> Any:
        return _socket_of(self.stream).getsockname()

    @property
    def remote_address(self) -> Any:
        return _socket_of(self.stream).getpeername()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        tracked = _tracked_of(self.stream)
        if isinstance(tracked, _Tracked):
            ticket, admission = tracked.ticket, tracked.admission
            with trio.move_on_at(ticket.deadline):
                await _first(self.request_rcvd, self.stream_closed)
            ticket.give_back(admission.pending)
            if self.request is None:
                if not self.stream_closed.is_set():
                    admission.timeouts += 1
                return  # still CONNECTING: websockets closes the stream
        await super().handshake(*args, **kwargs)


def _tracked_of(stream: trio.abc.Stream) -> trio.abc.Stream:
    return stream.transport_stream if isinstance(stream, trio.SSLStream) else stream


def _ticket_of(stream: trio.abc.Stream) -> Ticket:
    """The ticket of a stream :class:`GuardedListener` accepted (every stream of the server)."""
    tracked = _tracked_of(stream)
    if not isinstance(tracked, _Tracked):
        raise TypeError(f"not accepted by a GuardedListener: {tracked!r}")
    return tracked.ticket


def _socket_of(stream: trio.abc.Stream) -> Any:
    tracked = _tracked_of(stream)
    if isinstance(tracked, _Tracked):
        return tracked.socket
    if isinstance(tracked, trio.SocketStream):
        return tracked.socket
    raise NotImplementedError(f"unsupported stream type: {tracked!r}")


async def _first(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(_wait_then_cancel, event, nursery.cancel_scope)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
