"""The sans-IO signaling hub: rooms, peers, routing, resume and limits.

Theory of operation
-------------------
The I/O layer numbers its WebSocket connections and tells the hub three things: a connection
opened (:meth:`SignalHub.open`), a text frame arrived (:meth:`SignalHub.receive`), a connection
closed (:meth:`SignalHub.closed`); plus :meth:`SignalHub.handle_timeout` about once a second.
Each call returns a list of :class:`Outbound` (a message for a connection, and optionally "close
it with this code afterwards"). Nothing here touches a socket or a clock.

A *session* is a peer in a room: its server-generated id, its resume secret, the connection it is
attached to (None while it is away) and a bounded buffer of what was sent to it while away. A
connection has at most one session. When a connection closes, its session stays in the room for
``resume_grace`` seconds; a ``join`` with its resume secret re-attaches it (same id, buffered
messages delivered, no ``peer-left``/``peer-joined`` for the others). After the grace period the
others see ``peer-left``.

Errors are raised as :class:`~secureconnect.signal.messages.SignalError` where they are found
and become an ``error`` message at one site, :meth:`SignalHub.receive`.

One peer's input must cost the others nothing beyond the messages it is allowed to send them:
what is routed was checked on the way in (:func:`~.messages.parse_client_message`), a message
that still cannot be encoded is dropped and counted (never raised on another peer's path), and
a join costs the same however many rooms and sessions there are.
"""

from __future__ import annotations

import json
import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from secureconnect.signal.messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    IceRequest,
    Join,
    Leave,
    Ping,
    Signal,
    SignalError,
    encode,
    parse_client_message,
)
from secureconnect.signal.tokens import RoomTokens

Message = dict[str, Any]
#: peer id, now -> (RTCIceServer list, seconds the credentials live)
IceSource = Callable[[str, float], tuple[list[dict[str, Any]], int]]

CLOSE_POLICY = 1008  # RFC 6455 §7.4.1: "a message that violates its policy"
CLOSE_REPLACED = 4001  # ours: a resumed session moved to a new connection


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
    signals_routed: int = 0
    signals_buffered: int = 0
    buffer_dropped: int = 0
    resumes: int = 0
    sessions_expired: int = 0
    abusive_closed: int = 0
    unencodable: int = 0  # messages dropped because they could not be encoded
    errors: dict[str, int] = field(default_factory=dict)


class Session:
    """A peer in a room; see the module docstring."""

    __slots__ = (
        "buffer",
        "buffer_bytes",
        "conn",
        "detached_at",
        "ice_due",
        "peer",
        "resume",
        "room",
    )

    def __init__(self, peer: str, room: str, resume: str, conn: int, resume_buffer: int) -> None:
        self.peer = peer
        self.room = room
        self.resume = resume
        self.conn: int | None = conn
        self.detached_at = 0.0
        self.ice_due = 0.0
        self.buffer: deque[bytes] = deque(maxlen=resume_buffer)  # encoded messages
        self.buffer_bytes = 0


class Connection:
    """Per-connection state: its session and its rate-limit bucket."""

    __slots__ = ("closing", "session", "stamp", "strikes", "tokens")

    def __init__(self, now: float, burst: float) -> None:
        self.closing = False  # the hub asked to close it: ignore what it still sends
        self.session: Session | None = None
        self.tokens = burst
        self.stamp = now
        self.strikes = 0.0


class SignalHub:
    """Rooms and routing without I/O; see the module docstring."""

    def __init__(
        self,
        settings: HubSettings,
        ice: IceSource,
        tokens: RoomTokens | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings.require_tokens and tokens is None:
            raise ValueError("require_tokens needs RoomTokens")
        self.settings = settings
        self.ice = ice
        self.tokens = tokens
        self.rng = rng or random.Random(secrets.randbits(64))
        self.counters = HubCounters()
        self.connections: dict[int, Connection] = {}
        self.rooms: dict[str, dict[str, Session]] = {}
        self._by_resume: dict[str, Session] = {}
        self._peer_ids: set[str] = set()  # of every session in every room: O(1) fresh ids
        self._buffered_bytes = 0  # across every away session

    # -- connection events -------------------------------------------------------------------

    def open(self, conn: int, now: float) -> None:
        self.connections[conn] = Connection(now, self.settings.rate_burst)
        self.counters.connections_opened += 1

    def closed(self, conn: int, now: float) -> list[Outbound]:
        """The connection is gone; its session waits ``resume_grace`` seconds for a resume."""
        state = self.connections.pop(conn, None)
        if state is not None and state.session is not None and state.session.conn == conn:
            state.session.conn = None
            state.session.detached_at = now
        return []

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
            errors = self.counters.errors
            errors[exc.code] = errors.get(exc.code, 0) + 1
            return [Outbound(conn, exc.to_message())]

    def handle_timeout(self, now: float, wall_now: float) -> list[Outbound]:
        """End sessions whose grace period passed; push ICE servers that are about to expire
        (``now`` and ``wall_now`` as for :meth:`receive`)."""
        out: list[Outbound] = []
        grace = self.settings.resume_grace
        for room in list(self.rooms.values()):
            for session in list(room.values()):
                if session.conn is None:
                    if now - session.detached_at >= grace:
                        self.counters.sessions_expired += 1
                        out += self._remove(session)
                elif session.ice_due <= now:
                    out.append(Outbound(session.conn, self._ice_message(session, now, wall_now)))
        return out

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
            return self._signal(session, message)
        if isinstance(message, Leave):
            state.session = None
            return self._remove(session)
        if isinstance(message, IceRequest):
            return [Outbound(conn, self._ice_message(session, now, wall))]
        raise SignalError("unknown-type", "unhandled message")  # pragma: no cover

    def _join(
        self, conn: int, state: Connection, join: Join, now: float, wall: float
    ) -> list[Outbound]:
        if state.session is not None:
            raise SignalError("already-joined", "leave the current room first", ref="join")
        if self.settings.require_tokens and (
            self.tokens is None or not self.tokens.check(join.token, join.room, wall)
        ):
            raise SignalError("unauthorized", "a valid token for this room is required", "join")
        out: list[Outbound] = []
        session = self._by_resume.get(join.resume or "")
        if session is not None and session.room == join.room:
            if session.conn is not None and session.conn != conn:
                # The old connection is half dead: this one takes the session over.
                old = self.connections.get(session.conn)
                if old is not None:
                    old.session = None
                out.append(Outbound(session.conn, None, close=CLOSE_REPLACED))
            session.conn = conn
            state.session = session
            self.counters.resumes += 1
            out.append(Outbound(conn, self._welcome(session, now, wall, resumed=True)))
            out += [Outbound(conn, json.loads(text)) for text in session.buffer]
            self._drop_buffer(session)
            return out
        room = self.rooms.setdefault(join.room, {})
        if len(room) >= self.settings.max_room_size:
            if not room:
                del self.rooms[join.room]
            raise SignalError("room-full", "the room is full", ref="join")
        session = Session(
            self._new_peer_id(),
            join.room,
            secrets.token_urlsafe(24),
            conn,
            self.settings.resume_buffer,
        )
        out.append(Outbound(conn, self._welcome(session, now, wall, resumed=False)))
        joined = {"type": "peer-joined", "peer": session.peer}
        out += self._broadcast(room, joined)
        room[session.peer] = session
        self._peer_ids.add(session.peer)
        self._by_resume[session.resume] = session
        state.session = session
        return out

    def _signal(self, session: Session, signal: Signal) -> list[Outbound]:
        target = self.rooms.get(session.room, {}).get(signal.to)
        if target is None or target is session:
            raise SignalError("unknown-peer", f"no peer {signal.to[:64]!r} in this room", "signal")
        message = {"type": "signal", "from": session.peer, "data": signal.data}
        return self._deliver(target, message)

    # -- helpers -----------------------------------------------------------------------------

    def _deliver(self, target: Session, message: Message) -> list[Outbound]:
        if target.conn is not None:
            self.counters.signals_routed += 1
            return [Outbound(target.conn, message)]
        try:
            text = encode(message)
        except (ValueError, RecursionError):  # kept out by parsing; never the sender's failure
            self.counters.unencodable += 1
            return []
        size = len(text)
        limit = self.settings.resume_buffer_bytes
        if size > limit or self._buffered_bytes + size > self.settings.max_buffered_bytes:
            self.counters.buffer_dropped += 1
            return []
        buffer = target.buffer
        while buffer and (len(buffer) == buffer.maxlen or target.buffer_bytes + size > limit):
            dropped = len(buffer.popleft())  # the oldest goes first
            target.buffer_bytes -= dropped
            self._buffered_bytes -= dropped
            self.counters.buffer_dropped += 1
        buffer.append(text)
        target.buffer_bytes += size
        self._buffered_bytes += size
        self.counters.signals_buffered += 1
        return []

    def _broadcast(self, room: dict[str, Session], message: Message) -> list[Outbound]:
        return [Outbound(s.conn, message) for s in room.values() if s.conn is not None]

    def _drop_buffer(self, session: Session) -> None:
        self._buffered_bytes -= session.buffer_bytes
        session.buffer.clear()
        session.buffer_bytes = 0

    def _remove(self, session: Session) -> list[Outbound]:
        self._drop_buffer(session)
        room = self.rooms.get(session.room)
        self._by_resume.pop(session.resume, None)
        self._peer_ids.discard(session.peer)
        if room is None or room.pop(session.peer, None) is None:
            return []
        if not room:
            del self.rooms[session.room]
            return []
        return self._broadcast(room, {"type": "peer-left", "peer": session.peer})

    def _welcome(self, session: Session, now: float, wall: float, *, resumed: bool) -> Message:
        servers, ttl = self.ice(session.peer, wall)
        session.ice_due = now + ttl * 0.8
        peers = [p for p in self.rooms.get(session.room, {}) if p != session.peer]
        return {
            "type": "welcome",
            "version": PROTOCOL_VERSION,
            "peer": session.peer,
            "room": session.room,
            "peers": peers,
            "iceServers": servers,
            "iceTtl": ttl,
            "resume": session.resume,
            "resumed": resumed,
        }

    def _ice_message(self, session: Session, now: float, wall: float) -> Message:
        servers, ttl = self.ice(session.peer, wall)
        session.ice_due = now + ttl * 0.8
        return {"type": "ice", "iceServers": servers, "iceTtl": ttl}

    def _new_peer_id(self) -> str:
        while True:
            peer = f"p-{self.rng.getrandbits(48):012x}"
            if peer not in self._peer_ids:
                return peer

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
        """Gauges and counters as Prometheus samples."""
        counters = self.counters
        sessions = sum(len(room) for room in self.rooms.values())
        away = sum(1 for room in self.rooms.values() for s in room.values() if s.conn is None)
        samples: dict[str, float] = {
            "signal_connections": len(self.connections),
            "signal_rooms": len(self.rooms),
            "signal_sessions": sessions,
            "signal_sessions_away": away,
            "signal_connections_opened_total": counters.connections_opened,
            "signal_messages_received_total": counters.messages_received,
            "signal_signals_routed_total": counters.signals_routed,
            "signal_signals_buffered_total": counters.signals_buffered,
            "signal_buffer_dropped_total": counters.buffer_dropped,
            "signal_resumes_total": counters.resumes,
            "signal_sessions_expired_total": counters.sessions_expired,
            "signal_abusive_closed_total": counters.abusive_closed,
            "signal_messages_unencodable_total": counters.unencodable,
        }
        for code, count in counters.errors.items():
            samples[f'signal_errors_total{{code="{code}"}}'] = count
        return samples


class _Abusive(Exception):
    """A connection far past its rate limit: close it."""
