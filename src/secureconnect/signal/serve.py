"""Thin trio I/O for signaling: websockets' trio server around the sans-IO hub and routes.

Resource handling: listeners are opened (and TLS wrapped) before ``task_status.started()``; each
connection has an outbox bounded in messages and in bytes, drained by its own writer task, so a
slow browser never blocks the peers that signal it and cannot make the server queue more than
``OUTBOX_BYTES`` for it (a full outbox closes that connection and drops what it held; its session
can then resume). Connections are admitted at accept within the caps of
:mod:`~secureconnect.signal.serve_admission` (open connections, unfinished handshakes in total
and per address, a handshake deadline), and WebSockets within its cap per client address.

TLS: every accepted stream is wrapped with the certificate store's *current* context, so a
certificate reloaded on SIGHUP applies to new connections at once.

Error handling: the hub turns bad messages into ``error`` replies; frames above websockets'
``max_size`` (four times the message limit) close the connection with 1009; a client IP over its
WebSocket cap gets HTTP 429 before the handshake, a request with two ``Origin``, ``Host`` or
``Authorization`` headers a 400. Messages are encoded to UTF-8 here, before they are queued: one
that cannot be encoded (which parsing should have refused) is dropped and counted, logged once,
and never fails the connection it was meant for.

Every refusal is counted: the caps' as ``signal_connections_refused_total{reason=...}`` (the 429
as ``reason="websockets-per-ip"``), the 400s as ``signal_http_bad_requests_total``, connections
closed for a full outbox as ``signal_slow_closed_total``.

Operators (the admin interface, on the same trio loop) list the sessions attached here with
:meth:`SignalServer.admin_sessions` and end one with :meth:`SignalServer.admin_kill`; for that
the client address of each WebSocket is kept while it is open.
"""

from __future__ import annotations

import http
import ipaddress
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import trio
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.trio.server import ServerConnection
from websockets.trio.server import serve as serve_websockets

from secureconnect.logs import fields
from secureconnect.signal.backplane import Event
from secureconnect.signal.http import HttpRoutes, client_address
from secureconnect.signal.hub import CLOSE_POLICY, Outbound, SignalHub
from secureconnect.signal.messages import PEER_PATTERN, encode
from secureconnect.signal.serve_admission import (
    Admission,
    AdmissionLimits,
    GuardedConnection,
    GuardedListener,
)
from secureconnect.transport import open_tcp_listeners

log = logging.getLogger("secureconnect.signal")
OUTBOX = 256  # messages queued for one connection before it counts as too slow
OUTBOX_BYTES = 1024 * 1024  # bytes queued for one connection (at least 4 maximum messages)
TICK = 1.0
CLOSE_GOING_AWAY = 1001  # RFC 6455 §7.4.1: "an endpoint is going away"
DRAIN_CLOSE_SECONDS = 5.0  # for WebSockets to finish their closing handshake in a drain


class _Close:
    """Outbox sentinel: close the WebSocket with ``code``."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


class _Outbox:
    """A connection's queue of encoded frames, how many bytes it holds, and the connection's
    byte stream (aborted when the client falls too far behind)."""

    __slots__ = ("queued", "receive", "send", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes | _Close](OUTBOX)
        self.queued = 0
        self.stream = stream

    def drop(self) -> None:
        """Close both ends: the writer stops, what was queued is freed."""
        self.send.close()
        self.receive.close()


@dataclass
class SignalServer:
    """The signaling component's I/O; see the module docstring."""

    hub: SignalHub
    routes: HttpRoutes
    addresses: tuple[str, ...]
    port: int
    limits: AdmissionLimits
    tls_context: Callable[[], ssl.SSLContext] | None = None
    ping_interval: float = 20.0
    max_connections_per_ip: int = 64
    trusted_proxies: tuple[str, ...] = ()
    clock: Callable[[], float] = time.monotonic  # timers; wall time only for tokens and ICE
    #: Unix time minus ``clock()``, refreshed every tick (follows NTP steps): the hub gets
    #: ``now + wall_offset`` as ``wall_now``
    wall_offset: float = 0.0
    name: str = "signal"
    bound: list[tuple[str, str, int]] = field(default_factory=list)
    _outboxes: dict[int, _Outbox] = field(default_factory=dict)
    _addresses: dict[int, str] = field(default_factory=dict)  # conn -> client IP, while open
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _server: Any = None
    _nursery: trio.Nursery | None = None
    lingers = True  # see begin_drain
    draining: bool = False
    drained: trio.Event = field(default_factory=trio.Event)
    _no_connections: trio.Event = field(default_factory=trio.Event)
    slow_closed: int = 0  # connections closed because their outbox was full
    unencodable: int = 0  # messages dropped because they could not be encoded
    duplicate_headers: int = 0  # requests answered 400 for a repeated Origin/Host/Authorization

    def __post_init__(self) -> None:
        self._trusted = tuple(
            ipaddress.ip_network(net, strict=False) for net in self.trusted_proxies
        )
        # WebSockets per client IP are counted from the handshake on (so simultaneous
        # handshakes cannot overshoot the cap), on the connection's ticket: a handshake that dies
        # before its handler gives its slot back with its stream.
        self.admission = Admission(self.limits, max_websockets_per_ip=self.max_connections_per_ip)
        self._outbox_bytes = max(OUTBOX_BYTES, 4 * self.hub.settings.max_message_bytes)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report started, serve until cancelled."""
        self.wall_offset = time.time() - self.clock()
        async with trio.open_nursery() as outer:
            run = getattr(self.hub.backplane, "run", None)
            if run is not None:  # a backplane with I/O of its own (Redis): up before we listen
                await outer.start(run, self._from_backplane)
            await outer.start(self._serve)
            task_status.started()

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await open_tcp_listeners(self.addresses, self.port)
        scheme = "tls" if self.tls_context is not None else "tcp"
        self.bound[:] = [(scheme, *lst.socket.getsockname()[:2]) for lst in listeners]
        wrapped = [GuardedListener(lst, self.admission, self.tls_context) for lst in listeners]
        try:
            await self._serve_in(wrapped, task_status)
        finally:  # nothing left to drain
            self._nursery = self._server = None

    async def _serve_in(
        self, wrapped: list[GuardedListener], task_status: trio.TaskStatus[None]
    ) -> None:
        limit = self.hub.settings.max_message_bytes
        timeout = self.limits.handshake_timeout
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._server = await nursery.start(
                partial(
                    serve_websockets,
                    self._connection,
                    listeners=cast("list[trio.SocketListener]", wrapped),
                    process_request=self._process_request,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_interval,
                    # GuardedConnection holds TLS and the request to the deadline; this bounds
                    # the rest (answering it) for a client that stops reading.
                    open_timeout=2 * timeout,
                    create_connection=GuardedConnection,
                    max_size=4 * limit,
                    compression=None,
                    server_header=None,
                )
            )
            nursery.start_soon(self._tick_loop)
            task_status.started()

    def begin_drain(self) -> None:
        """Say "going away" (1001) to every WebSocket and refuse new ones (503), so clients
        reconnect to another node (where a Redis backplane lets them resume); HTTP goes on, so
        ``/healthz`` answers ``draining`` to load balancers. ``drained`` is set once the
        WebSockets have ended and the backplane has been told; the supervisor cancels ``serve``
        when the rest of the process is done (this component *lingers*)."""
        if self.draining:
            return
        self.draining = True
        for conn in list(self._outboxes):
            self._dispatch([Outbound(conn, None, close=CLOSE_GOING_AWAY)])
        if self._nursery is None:
            self.drained.set()
        else:
            self._nursery.start_soon(self._finish_drain)

    async def _finish_drain(self) -> None:
        with trio.move_on_after(DRAIN_CLOSE_SECONDS):
            if self._outboxes:
                await self._no_connections.wait()
        flush = getattr(self.hub.backplane, "flush", None)
        if flush is not None:  # the sessions' detaches reach Redis: they resume elsewhere
            with trio.move_on_after(2):
                await flush()
        self.drained.set()

    def _from_backplane(self, events: list[Event]) -> None:
        now = self.clock()
        self._dispatch(self.hub.apply(events, now, now + self.wall_offset))

    def reload(self) -> None:
        """TLS contexts are fetched per connection; credentials live in the shared minter."""

    def metrics(self) -> dict[str, float]:
        samples = self.hub.metrics()
        samples.update(self.admission.metrics())
        samples["signal_messages_unencodable_total"] += self.unencodable
        samples["signal_slow_closed_total"] = self.slow_closed
        samples["signal_http_bad_requests_total"] = (
            self.routes.bad_requests + self.duplicate_headers
        )
        return samples

    # -- operators -------------------------------------------------------------------------------

    async def admin_sessions(self, user: str | None) -> list[dict[str, object]]:
        """The signaling sessions attached to this process, one dict each: ``kind`` ("signal"),
        ``peer``, ``room``, ``address`` (the client IP, X-Forwarded-For from trusted proxies
        applied), ``age`` (seconds since it was welcomed here: joined or resumed) and
        ``resumed``. ``user``: only the session with that peer id (a signaling peer's TURN
        credentials carry its peer id as the user, see :mod:`~.ice`); None: all of them."""
        await trio.lowlevel.checkpoint()
        sessions = self.hub.sessions
        if user is None:
            chosen = list(sessions.values())
        else:
            one = sessions.get(user)
            chosen = [] if one is None else [one]
        now = self.clock()
        return [
            {
                "kind": "signal",
                "peer": session.peer,
                "room": session.room,
                "address": self._addresses.get(session.conn, ""),
                "age": max(0.0, now - session.joined),
                "resumed": session.resumed,
            }
            for session in chosen
        ]

    async def admin_kill(
        self, *, user: str | None = None, allocation: str | None = None, peer: str | None = None
    ) -> int:
        """End the session named by ``peer`` (or ``user``: for signaling the same peer id; given
        both, they must agree) for good, see :meth:`SignalHub.kill`; how many sessions ended
        here (0 or 1). ``allocation`` names a TURN allocation, which matches nothing here; no
        criterion at all matches nothing either (never "all"). A session attached here is
        ended here; one that is away (its connection dropped, its grace period running) is
        ended in the directory (:meth:`~.backplane.Backplane.end_away`), so it cannot resume:
        with the Redis backplane, whichever node gets there first (a session attached to
        another node is that node's to end)."""
        await trio.lowlevel.checkpoint()
        named = {name for name in (peer, user) if name is not None}
        if allocation is not None or len(named) != 1:
            return 0
        (target,) = named
        if target in self.hub.sessions:
            self._dispatch(self.hub.kill(target, self.clock()))
            log.info("signal-session-killed", extra=fields(peer=target, away=False))
            return 1
        if PEER_PATTERN.fullmatch(target) is None:
            return 0  # not a peer id (a TURN user's name): nothing of signaling's
        ended, events = await self.hub.backplane.end_away(target, self.clock())
        if events:
            self._from_backplane(events)
        if ended:
            log.info("signal-session-killed", extra=fields(peer=target, away=True))
        return int(ended)

    # -- HTTP ------------------------------------------------------------------------------------

    def _client_ip(self, connection: ServerConnection, request: Request | None) -> str:
        remote = connection.remote_address[0] if connection.remote_address else ""
        forwarded = request.headers.get("X-Forwarded-For") if request is not None else None
        return client_address(remote, forwarded, self._trusted)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers: dict[str, str] = {}
        for key, value in request.headers.raw_items():
            name = key.lower()
            if name in headers and name in ("origin", "host", "authorization"):
                # One of each: two Origin headers could smuggle a foreign origin past the check.
                self.duplicate_headers += 1
                return _response(400, "application/json", b'{"error": "duplicate header"}')
            headers[name] = value
        ip = self._client_ip(connection, request)
        reply = self.routes.respond(request.path, headers, ip)
        if reply is None and self.draining:
            return _response(503, "application/json", b'{"error": "draining"}')
        if reply is None:
            if not self.admission.admit_websocket(connection, ip):  # counted by the cap
                return _response(429, "application/json", b'{"error": "too many connections"}')
            return None
        return _response(reply.status, reply.content_type, reply.body, reply.headers)

    # -- WebSocket connections ---------------------------------------------------------------------

    async def _connection(self, websocket: ServerConnection) -> None:
        conn = next(self._ids)
        outbox = self._outboxes[conn] = _Outbox(websocket.stream)
        self._addresses[conn] = self._client_ip(websocket, websocket.request)
        self.hub.open(conn, self.clock())
        if self.draining:  # its handshake finished after the drain began: it goes too
            self._dispatch([Outbound(conn, None, close=CLOSE_GOING_AWAY)])
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, websocket, outbox)
                try:
                    async for frame in websocket:
                        now = self.clock()
                        received = self.hub.receive(conn, frame, now, now + self.wall_offset)
                        self._dispatch(received)
                except ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            self._outboxes.pop(conn, None)
            self._addresses.pop(conn, None)
            outbox.drop()
            self._dispatch(self.hub.closed(conn, self.clock()))
            self.admission.end_websocket(websocket)
            if self.draining and not self._outboxes:
                self._no_connections.set()

    async def _write(self, websocket: ServerConnection, outbox: _Outbox) -> None:
        try:
            async for item in outbox.receive:
                if isinstance(item, _Close):
                    await websocket.aclose(item.code)
                    return
                await websocket.send(item, text=True)  # UTF-8 already: encode() checked it
                outbox.queued -= len(item)
        except trio.ClosedResourceError:
            pass  # dropped under us: the client could not keep up
        except ConnectionClosed:
            return
        try:
            await websocket.aclose(CLOSE_POLICY)
        except ConnectionClosed:
            return

    def _dispatch(self, outbound: list[Outbound]) -> None:
        for item in outbound:
            box = self._outboxes.get(item.conn)
            if box is not None and not self._queue(box, item):
                # Too slow to keep up: end the connection (its session may resume). Its writer
                # may be blocked in a send to a client that stopped reading, where neither a
                # closed outbox nor websockets' keepalive (same send lock) would ever reach it:
                # abort the stream itself, without a closing handshake nobody would read.
                self.slow_closed += 1
                box.drop()
                self._outboxes.pop(item.conn, None)
                if self._nursery is not None:
                    self._nursery.start_soon(trio.aclose_forcefully, box.stream)

    def _queue(self, box: _Outbox, item: Outbound) -> bool:
        """Queue ``item``'s frame and close; False if the outbox is full (messages or bytes)."""
        frame = self._encode(item.message) if item.message is not None else b""
        try:
            if frame:
                if box.queued + len(frame) > self._outbox_bytes:
                    return False
                box.send.send_nowait(frame)
                box.queued += len(frame)
            if item.close is not None:
                box.send.send_nowait(_Close(item.close))
        except trio.WouldBlock:
            return False
        return True

    def _encode(self, message: dict[str, Any]) -> bytes:
        """The frame for ``message``; empty (dropped, counted, logged once) if it cannot be
        encoded, so that no peer's data can fail another peer's connection."""
        try:
            return encode(message)
        except (ValueError, RecursionError) as exc:
            self.unencodable += 1
            if self.unencodable == 1:
                log.warning(
                    "signal-message-unencodable",
                    extra=fields(type=str(message.get("type"))[:20], error=type(exc).__name__),
                )
            return b""

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(TICK)
            self.wall_offset = time.time() - self.clock()
            now = self.clock()
            self._dispatch(self.hub.handle_timeout(now, now + self.wall_offset))


def _response(
    status: int, content_type: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *extra])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)
