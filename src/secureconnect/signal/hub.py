"""The sans-IO signaling hub: rooms, peers, routing, resume and limits.

Theory of operation
-------------------
The I/O layer numbers its WebSocket connections and tells the hub three things: a connection
opened (:meth:`SignalHub.open`), a text frame arrived (:meth:`SignalHub.receive`), a connection
closed (:meth:`SignalHub.closed`); plus :meth:`SignalHub.handle_timeout` about once a second.
Each call returns a list of :class:`Outbound` (a message for a connection, and optionally "close
it with this code afterwards"). Nothing here touches a socket or a clock.

A *session* is a peer in a room: its server-generated id, its resume secret and the connection
it is attached to. A connection has at most one session. Rooms, peer ids, routing and what is
kept for a session that is away belong to the *backplane*
(:mod:`~secureconnect.signal.backplane`): in memory by default, in Redis across nodes. The hub
asks it (join, route, leave, detach, tick) and turns its events into :class:`Outbound`; a
backplane that answers later hands its events to :meth:`SignalHub.apply`.

When a connection closes, its session stays in the room for ``resume_grace`` seconds; a ``join``
with its resume secret re-attaches it, on this process or (with Redis) on another node: same id,
owed messages delivered, no ``peer-left``/``peer-joined`` for the others. After the grace period
the others see ``peer-left``.

An operator may end a session (:meth:`SignalHub.kill`): it leaves the room at once, as with a
``leave`` (the others see ``peer-left``, its resume secret stops working), and its connection gets
an ``error`` with code ``killed`` and is closed with :data:`CLOSE_KILLED`.

Errors are raised as :class:`~secureconnect.signal.messages.SignalError` where they are found
and become an ``error`` message at one site, :meth:`SignalHub.receive`.

One peer's input must cost the others nothing beyond the messages it is allowed to send them:
what is routed was checked on the way in (:func:`~.messages.parse_client_message`), a message
that still cannot be encoded is dropped and counted (never raised on another peer's path), and
a join costs the same however many rooms and sessions there are.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from secureconnect.signal.backplane import (
    Backplane,
    Deliver,
    Event,
    MailboxLimits,
    MemoryBackplane,
    Notify,
    Replaced,
    Welcome,
    decode_replay,
)
from secureconnect.signal.messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    IceRequest,
    Join,
    Leave,
    Ping,
    Signal,
    SignalError,
    parse_client_message,
)
from secureconnect.signal.tokens import RoomTokens

Message = dict[str, Any]
#: peer id, now -> (RTCIceServer list, seconds the credentials live)
IceSource = Callable[[str, float], tuple[list[dict[str, Any]], int]]

CLOSE_POLICY = 1008  # RFC 6455 §7.4.1: "a message that violates its policy"
CLOSE_REPLACED = 4001  # ours: a resumed session moved to a new connection
CLOSE_KILLED = 4002  # ours: the operator ended the session (no resume)


@dataclass(frozen=True, slots=True, kw_only=True)
class HubSettings:
    """The hub's parameters. Those that follow from ``[signal]`` have no default here: their one
    home is ``config/schema.py``, and ``runtime.hub_settings`` maps ``[signal]`` onto them (tests
    start from the same mapping of the schema's defaults). The memory bounds of the resume
    buffers are not configurable and keep theirs."""

    max_room_size: int
    max_message_bytes: int
    rate_limit: float  # messages per second per connection
    rate_burst: float
    abuse_strikes: int  # rate-limited messages (net of refill) before closing
    resume_grace: float  # seconds
    resume_buffer: int  # messages kept per away session
    require_tokens: bool  # signal.auth = "token"
    # Buffered messages are kept as JSON text (a parsed 64 KiB frame can take 1.5 MB of heap),
    # bounded per session and in total, so away sessions cannot exhaust memory.
    resume_buffer_bytes: int = 256 * 1024
    max_buffered_bytes: int = 64 * 1024 * 1024


def mailbox_limits(settings: HubSettings) -> MailboxLimits:
    """The backplane's bounds for what is kept per session, from the hub's settings."""
    return MailboxLimits(
        resume_grace=settings.resume_grace,
        resume_buffer=settings.resume_buffer,
        resume_buffer_bytes=settings.resume_buffer_bytes,
        max_buffered_bytes=settings.max_buffered_bytes,
    )


@dataclass(frozen=True, slots=True)
class Outbound:
    """Send ``message`` on connection ``conn`` (None: nothing); then close it if ``close``."""

    conn: int
    message: Message | None
    close: int | None = None


@dataclass(slots=True)
class HubCounters:
    connections_opened: int = 0
    messages_received: int = 0
    abusive_closed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Session:
    """A peer of this process: in a room, attached to one of its connections. ``joined`` is
    when it was welcomed here (the hub's monotonic ``now``) and ``resumed`` whether that welcome
    took back an earlier session, so operators can see how long it has been attached here."""

    __slots__ = ("conn", "epoch", "ice_due", "joined", "peer", "resume", "resumed", "room")

    def __init__(
        self,
        peer: str,
        room: str,
        resume: str,
        conn: int,
        epoch: int,
        *,
        joined: float,
        resumed: bool,
    ) -> None:
        self.peer = peer
        self.room = room
        self.resume = resume
        self.conn = conn
        self.epoch = epoch
        self.joined = joined
        self.resumed = resumed
        self.ice_due = 0.0


class Connection:
    """Per-connection state: its session, whether a join is on its way, its rate-limit bucket."""

    __slots__ = ("closing", "joining", "session", "stamp", "strikes", "tokens")

    def __init__(self, now: float, burst: float) -> None:
        self.closing = False  # the hub asked to close it: ignore what it still sends
        self.joining = False  # a join waits for the backplane's answer
        self.session: Session | None = None
        self.tokens = burst
        self.stamp = now
        self.strikes = 0.0


class SignalHub:
    """Connections, rate limits and ICE without I/O; the directory is the backplane's. See the
    module docstring."""

    def __init__(
        self,
        settings: HubSettings,
        ice: IceSource,
        tokens: RoomTokens | None = None,
        rng: random.Random | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        if settings.require_tokens and tokens is None:
            raise ValueError("require_tokens needs RoomTokens")
        self.settings = settings
        self.ice = ice
        self.tokens = tokens
        self.counters = HubCounters()
        self.connections: dict[int, Connection] = {}
        self.sessions: dict[str, Session] = {}  # peer id -> the session attached here
        self.local_rooms: dict[str, set[str]] = {}  # room -> peers attached here
        if backplane is None:
            backplane = MemoryBackplane(
                mailbox_limits(settings), rng=rng or random.Random(secrets.randbits(64))
            )
        self.backplane = backplane

    # -- connection events -------------------------------------------------------------------

    def open(self, conn: int, now: float) -> None:
        self.connections[conn] = Connection(now, self.settings.rate_burst)
        self.counters.connections_opened += 1

    def closed(self, conn: int, now: float) -> list[Outbound]:
        """The connection is gone; its session waits ``resume_grace`` seconds for a resume."""
        state = self.connections.pop(conn, None)
        if state is None or state.session is None:
            return []
        session = state.session
        self._forget(session)
        return self._run(self.backplane.detach(session.peer, session.epoch, now), now, now)

    def receive(self, conn: int, frame: str | bytes, now: float, wall_now: float) -> list[Outbound]:
        """One frame from ``conn``: the messages to send in answer (the one error site).

        Grace periods, rate limits and ICE schedules run on ``now`` (the caller's monotonic
        clock); minted credentials and room-token expiry need Unix time, ``wall_now``."""
        state = self.connections.get(conn)
        if state is None or state.closing:
            return []
        self.counters.messages_received += 1
        try:
            self._rate_limit(state, now)
            message = parse_client_message(frame, self.settings.max_message_bytes)
            return self._dispatch(conn, state, message, now, wall_now)
        except _Abusive:
            state.closing = True
            self.counters.abusive_closed += 1
            return [Outbound(conn, None, close=CLOSE_POLICY)]
        except SignalError as exc:
            return [self._error(conn, exc.code, exc.message, exc.ref)]

    def handle_timeout(self, now: float, wall_now: float) -> list[Outbound]:
        """End sessions whose grace period passed; push ICE servers that are about to expire
        (``now`` and ``wall_now`` as for :meth:`receive`)."""
        out = self._run(self.backplane.tick(now), now, wall_now)
        for session in self.sessions.values():
            if session.ice_due <= now:
                out.append(Outbound(session.conn, self._ice_message(session, now, wall_now)))
        return out

    def apply(self, events: list[Event], now: float, wall_now: float) -> list[Outbound]:
        """Events of the backplane that came later than the call that caused them."""
        return self._run(events, now, wall_now)

    def kill(self, peer: str, now: float) -> list[Outbound]:
        """The operator ends the session ``peer`` attached here, for good: unlike a closed
        connection there is no grace period to resume in. It leaves the room (the other peers,
        here and on other nodes, see ``peer-left``; the backplane forgets its resume secret), and
        its connection gets a ``killed`` error, is closed with :data:`CLOSE_KILLED` and is
        marked closing, so frames it still sends are ignored.

        A peer not attached here gives [] and changes nothing: one attached to another node is
        ended there (a cluster-wide kill reaches every node), one that is away is ended in the
        directory (``Backplane.end_away``, which the service calls)."""
        session = self.sessions.get(peer)
        if session is None:
            return []
        self._forget(session)
        out: list[Outbound] = []
        state = self.connections.get(session.conn)
        if state is not None:
            state.session = None
            state.closing = True
            error = self._error(session.conn, "killed", "ended by the operator", None)
            out.append(Outbound(session.conn, error.message, close=CLOSE_KILLED))
        # Leave only produces peer-left notices, which need no wall clock.
        return out + self._run(self.backplane.leave(session.peer, session.epoch, now), now, now)

    # -- messages ----------------------------------------------------------------------------

    def _dispatch(
        self, conn: int, state: Connection, message: ClientMessage, now: float, wall: float
    ) -> list[Outbound]:
        if isinstance(message, Ping):
            return [Outbound(conn, {"type": "pong", "id": message.id})]
        if isinstance(message, Join):
            return self._join(conn, state, message, now, wall)
        session = state.session
        if session is None:
            kind = type(message).__name__.lower().replace("icerequest", "ice")
            raise SignalError("not-joined", "join a room first", ref=kind)
        if isinstance(message, Signal):
            if message.to == session.peer:
                raise SignalError(
                    "unknown-peer", f"no peer {message.to[:64]!r} in this room", "signal"
                )
            routed = {"type": "signal", "from": session.peer, "data": message.data}
            events = self.backplane.route(conn, session.peer, session.room, message.to, routed)
            return self._run(events, now, wall)
        if isinstance(message, Leave):
            state.session = None
            self._forget(session)
            return self._run(self.backplane.leave(session.peer, session.epoch, now), now, wall)
        if isinstance(message, IceRequest):
            return [Outbound(conn, self._ice_message(session, now, wall))]
        raise SignalError("unknown-type", "unhandled message")  # pragma: no cover

    def _join(
        self, conn: int, state: Connection, join: Join, now: float, wall: float
    ) -> list[Outbound]:
        if state.session is not None or state.joining:
            raise SignalError("already-joined", "leave the current room first", ref="join")
        if self.settings.require_tokens and (
            self.tokens is None or not self.tokens.check(join.token, join.room, wall)
        ):
            raise SignalError("unauthorized", "a valid token for this room is required", "join")
        state.joining = True
        events = self.backplane.join(
            conn, join.room, join.resume, join.last, self.settings.max_room_size, now=now
        )
        return self._run(events, now, wall)

    # -- backplane events --------------------------------------------------------------------

    def _run(self, events: list[Event] | None, now: float, wall: float) -> list[Outbound]:
        out: list[Outbound] = []
        for event in events or ():
            if isinstance(event, Deliver):
                session = self.sessions.get(event.peer)
                if session is not None:
                    out.append(Outbound(session.conn, event.message))
            elif isinstance(event, Notify):
                for peer in self.local_rooms.get(event.room, ()):
                    if peer != event.peer:
                        out.append(Outbound(self.sessions[peer].conn, event.message))
            elif isinstance(event, Welcome):
                out += self._welcomed(event, now, wall)
            elif isinstance(event, Replaced):
                out += self._replaced(event.peer, event.epoch)
            else:
                state = self.connections.get(event.conn)
                if state is not None:
                    state.joining = False
                out.append(self._error(event.conn, event.code, event.message, event.ref))
        return out

    def _welcomed(self, event: Welcome, now: float, wall: float) -> list[Outbound]:
        state = self.connections.get(event.conn)
        if state is None or state.closing:
            # The connection closed while its join was on its way: the session starts away.
            return self._run(self.backplane.detach(event.peer, event.epoch, now), now, wall)
        state.joining = False
        out = self._replaced(event.peer, None) if event.peer in self.sessions else []
        session = Session(
            event.peer,
            event.room,
            event.resume,
            event.conn,
            event.epoch,
            joined=now,
            resumed=event.resumed,
        )
        state.session = session
        self.sessions[session.peer] = session
        self.local_rooms.setdefault(session.room, set()).add(session.peer)
        servers, ttl = self.ice(session.peer, wall)
        session.ice_due = now + ttl * 0.8
        welcome = {
            "type": "welcome",
            "version": PROTOCOL_VERSION,
            "peer": session.peer,
            "room": session.room,
            "peers": list(event.peers),
            "iceServers": servers,
            "iceTtl": ttl,
            "resume": session.resume,
            "resumed": event.resumed,
        }
        out.append(Outbound(event.conn, welcome))
        out += [Outbound(event.conn, m) for m in decode_replay(event.replay)]
        return out

    def _replaced(self, peer: str, epoch: int | None) -> list[Outbound]:
        """Close the connection here that holds ``peer`` (of ``epoch``, if given): a newer
        connection took the session over."""
        session = self.sessions.get(peer)
        if session is None or (epoch is not None and session.epoch != epoch):
            return []
        self._forget(session)
        old = self.connections.get(session.conn)
        if old is not None:
            old.session = None
        return [Outbound(session.conn, None, close=CLOSE_REPLACED)]

    # -- helpers -----------------------------------------------------------------------------

    def _forget(self, session: Session) -> None:
        """``session`` is no longer attached here."""
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]
            peers = self.local_rooms.get(session.room)
            if peers is not None:
                peers.discard(session.peer)
                if not peers:
                    del self.local_rooms[session.room]

    def _error(self, conn: int, code: str, message: str, ref: str | None) -> Outbound:
        errors = self.counters.errors
        errors[code] = errors.get(code, 0) + 1
        return Outbound(conn, SignalError(code, message, ref).to_message())

    def _ice_message(self, session: Session, now: float, wall: float) -> Message:
        servers, ttl = self.ice(session.peer, wall)
        session.ice_due = now + ttl * 0.8
        return {"type": "ice", "iceServers": servers, "iceTtl": ttl}

    def _rate_limit(self, state: Connection, now: float) -> None:
        settings = self.settings
        # A wall clock stepped back must not drain buckets or add strikes: no negative refill.
        refill = max(0.0, now - state.stamp) * settings.rate_limit
        state.stamp = max(state.stamp, now)
        state.tokens = min(settings.rate_burst, state.tokens + refill)
        state.strikes = max(0.0, state.strikes - refill)
        if state.tokens >= 1.0:
            state.tokens -= 1.0
            return
        state.strikes += 1.0
        if state.strikes > settings.abuse_strikes:
            raise _Abusive
        raise SignalError("rate-limited", "too many messages; this one was dropped")

    def metrics(self) -> dict[str, float]:
        """Gauges and counters as Prometheus samples (the directory's from the backplane)."""
        counters = self.counters
        samples: dict[str, float] = {
            "signal_connections": len(self.connections),
            "signal_sessions_here": len(self.sessions),
            "signal_connections_opened_total": counters.connections_opened,
            "signal_messages_received_total": counters.messages_received,
            "signal_abusive_closed_total": counters.abusive_closed,
        }
        samples.update(self.backplane.metrics())
        for code, count in counters.errors.items():
            samples[f'signal_errors_total{{code="{code}"}}'] = count
        return samples


class _Abusive(Exception):
    """A connection far past its rate limit: close it."""
