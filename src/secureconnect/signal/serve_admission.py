"""Admission control on the signaling port: caps on open connections and unfinished handshakes.

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

How: :class:`GuardedListener` wraps each accepted stream in :class:`_Tracked`, which holds a
:class:`_Ticket` (the slots it takes) and gives them back when the stream is closed, however that
happens (or when it is garbage-collected, as a backstop). :class:`GuardedConnection` is the
``ServerConnection`` websockets creates for it: it waits for the request under the deadline and
releases the handshake slot once the request is in.

Memory: a connection in its handshake costs about 66 KiB over TLS (22 KiB without), so the
default caps bound a flood at roughly 70 MB, which the allocator keeps for the next burst rather
than returning (measured: ``gc.collect()`` and glibc ``malloc_trim(0)`` gave back under 3 MB
of it, so neither is called).
"""

from __future__ import annotations

import ipaddress
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.trio.server import ServerConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REASONS = ("connections", "pending", "pending-per-ip")


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
    """The counts behind the caps; see the module docstring."""

    limits: AdmissionLimits
    open: int = 0
    pending: int = 0
    timeouts: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    _pending_per_ip: dict[str, int] = field(default_factory=dict)

    def admit(self, ip: str) -> _Ticket | None:
        """A ticket holding a connection slot and a handshake slot, or None (refused)."""
        limits = self.limits
        reason = None
        held = self._pending_per_ip.get(ip, 0)
        if self.open >= limits.max_connections:
            reason = "connections"
        elif self.pending >= limits.max_pending:
            reason = "pending"
        elif held >= limits.max_pending_per_ip and not self._exempt(ip):
            reason = "pending-per-ip"
        if reason is not None:
            self.refused[reason] += 1
            return None
        self.open += 1
        self.pending += 1
        self._pending_per_ip[ip] = held + 1
        return _Ticket(self, ip, trio.current_time() + limits.handshake_timeout)

    def _exempt(self, ip: str) -> bool:
        if not self.limits.exempt:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.limits.exempt)

    def _end_handshake(self, ip: str) -> None:
        self.pending -= 1
        left = self._pending_per_ip.pop(ip) - 1
        if left:
            self._pending_per_ip[ip] = left

    def _close(self) -> None:
        self.open -= 1

    def metrics(self) -> dict[str, float]:
        samples: dict[str, float] = {
            "signal_tcp_connections": self.open,
            "signal_handshakes_pending": self.pending,
            "signal_handshake_timeouts_total": self.timeouts,
        }
        for reason, count in self.refused.items():
            samples[f'signal_connections_refused_total{{reason="{reason}"}}'] = count
        return samples


class _Ticket:
    """The slots one accepted connection holds; each is given back exactly once."""

    __slots__ = ("admission", "deadline", "ip", "open", "pending")

    def __init__(self, admission: Admission, ip: str, deadline: float) -> None:
        self.admission = admission
        self.ip = ip
        self.deadline = deadline  # trio time by which the HTTP request must be in
        self.pending = True
        self.open = True

    def end_handshake(self) -> None:
        if self.pending:
            self.pending = False
            self.admission._end_handshake(self.ip)

    def close(self) -> None:
        self.end_handshake()
        if self.open:
            self.open = False
            self.admission._close()


class _Tracked(trio.abc.HalfCloseableStream):
    """An accepted TCP stream holding a :class:`_Ticket` until it is closed."""

    def __init__(self, inner: trio.SocketStream, ticket: _Ticket) -> None:
        self.inner = inner
        self.socket = inner.socket
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
            tracked = _Tracked(stream, ticket)
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
        ticket = _ticket_of(self.stream)
        if ticket is not None:
            with trio.move_on_at(ticket.deadline):
                await _first(self.request_rcvd, self.stream_closed)
            ticket.end_handshake()
            if self.request is None:
                if not self.stream_closed.is_set():
                    ticket.admission.timeouts += 1
                return  # still CONNECTING: websockets closes the stream
        await super().handshake(*args, **kwargs)


def _tracked_of(stream: trio.abc.Stream) -> trio.abc.Stream:
    return stream.transport_stream if isinstance(stream, trio.SSLStream) else stream


def _ticket_of(stream: trio.abc.Stream) -> _Ticket | None:
    tracked = _tracked_of(stream)
    return tracked.ticket if isinstance(tracked, _Tracked) else None


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
