"""The backplane seam of the signaling hub: rooms, peer ids, routing and resume, behind one
interface with two implementations.

Why: the hub (:mod:`~secureconnect.signal.hub`) owns what is tied to a WebSocket of this process
(parsing, rate limits, ICE servers, which connection holds which peer). Who is in which room,
where a message for a peer goes and what is kept for a peer that is away is *directory* state:
in one process it lives in memory (:class:`MemoryBackplane`, the default), across nodes in Redis
(:mod:`~secureconnect.signal.redisplane`). Both speak the same sans-IO language:

* the hub calls a method (:meth:`Backplane.join`, ``route``, ``leave``, ``detach``, ``tick``);
* the backplane answers with :data:`Event` objects, at once (memory: the list is returned) or
  later (Redis: the method returns None and the I/O task feeds the events to
  :meth:`~secureconnect.signal.hub.SignalHub.apply` when Redis has answered).

Delivery: every ``signal`` message a session is sent carries ``seq``, a number that grows by one
per message to that session. The session's *mailbox* keeps the latest messages (at most
``resume_buffer`` of them and ``resume_buffer_bytes``, and the server-wide
``max_buffered_bytes``). A ``join`` that resumes may say ``last``, the highest ``seq`` the client
has seen: it is sent every message after that one, so a message lost with a dying connection or
a dying node is delivered once, and one that arrived is not sent again. Without ``last`` a resume
gets what was sent while the session was away (the protocol's first version). Messages delivered
to a connected session are kept for :data:`HISTORY_SECONDS` only, so an active room does not fill
the server-wide bound that away sessions need.

A session's duration, from the join that created it to its end (a ``leave``, or the end of a
grace period spent away; a resume continues it), goes into ``DirectoryCounters.durations``: the
``signal_session_duration_seconds`` histogram of the node that ended it (docs/metrics.md).
"""

from __future__ import annotations

import json
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from secureconnect.accounting import Histogram
from secureconnect.signal.messages import encode

Message = dict[str, Any]
#: How long a message delivered to a connected session stays in its mailbox (for a resume that
#: says ``last``): a connection that died has lost at most what its last ping interval held.
HISTORY_SECONDS = 60.0


# -- events: what the backplane tells the hub ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """``conn``'s join succeeded: ``peer`` in ``room``; ``replay`` are the encoded messages owed
    to a resumed session, oldest first. ``epoch`` numbers the session's attachments (a detach
    names it, so a stale one is ignored)."""

    conn: int
    peer: str
    room: str
    resume: str
    resumed: bool
    peers: tuple[str, ...]
    replay: tuple[bytes, ...] = ()
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """A command of ``conn`` failed: answer it with the contract's ``error``."""

    conn: int
    code: str
    message: str
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``message`` to the session ``peer`` if it is connected here."""

    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class Notify:
    """Send ``message`` (peer-joined, peer-left) to the connected sessions of ``room`` here,
    except ``peer`` itself."""

    room: str
    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class Replaced:
    """``peer`` was taken over by a newer connection (a resume): close its connection here."""

    peer: str
    epoch: int


Event = Welcome | Refused | Deliver | Notify | Replaced


class Backplane(Protocol):
    """The directory; see the module docstring. A method returns the events it caused, or None
    when they will come later through the hub's :meth:`apply`."""

    def join(
        self,
        conn: int,
        room: str,
        resume: str | None,
        last: int | None,
        capacity: int,
        *,
        now: float,
    ) -> list[Event] | None: ...

    def route(
        self, conn: int, sender: str, room: str, target: str, message: Message
    ) -> list[Event] | None: ...

    def leave(self, peer: str, epoch: int, now: float) -> list[Event] | None: ...

    def detach(self, peer: str, epoch: int, now: float) -> list[Event] | None: ...

    def tick(self, now: float) -> list[Event] | None: ...

    async def end_away(self, peer: str, now: float) -> tuple[bool, list[Event]]:
        """End ``peer``'s session if it is away (in its grace period, attached nowhere): the
        operator's kill of a session whose connection just dropped, which must not resume.
        (whether it ended, the events that follow); awaited, since a shared directory has
        to be asked, and raises when it cannot be (a ConnectionError saying why)."""
        ...

    def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxLimits:
    """The bounds of the module docstring (``signal.resume_*``; memory bounds fixed)."""

    resume_grace: float
    resume_buffer: int
    resume_buffer_bytes: int = 256 * 1024
    max_buffered_bytes: int = 64 * 1024 * 1024


@dataclass(slots=True)
class DirectoryCounters:
    signals_routed: int = 0
    signals_buffered: int = 0
    buffer_dropped: int = 0
    resumes: int = 0
    sessions_expired: int = 0
    unencodable: int = 0
    #: seconds from a session's first join to its end (leave or expiry), sessions ended here
    durations: Histogram = field(default_factory=Histogram)

    def samples(self) -> dict[str, float]:
        return {
            **self.durations.samples("signal_session_duration_seconds"),
            "signal_signals_routed_total": self.signals_routed,
            "signal_signals_buffered_total": self.signals_buffered,
            "signal_buffer_dropped_total": self.buffer_dropped,
            "signal_resumes_total": self.resumes,
            "signal_sessions_expired_total": self.sessions_expired,
            "signal_messages_unencodable_total": self.unencodable,
        }


def unknown_peer(conn: int, target: str) -> Refused:
    return Refused(conn, "unknown-peer", f"no peer {target[:64]!r} in this room", "signal")


ROOM_FULL = ("room-full", "the room is full", "join")


# -- the in-memory directory --------------------------------------------------------------------


class Member:
    """A session in the directory: its mailbox of ``(seq, delivered_at or None, text)``."""

    __slots__ = (
        "attached",
        "born",
        "box",
        "box_bytes",
        "detached_at",
        "epoch",
        "peer",
        "resume",
        "room",
        "sent",
        "seq",
    )

    def __init__(self, peer: str, room: str, resume: str, born: float = 0.0) -> None:
        self.peer = peer
        self.room = room
        self.resume = resume
        self.born = born  # the hub's clock at the join that created it
        self.attached = True
        self.detached_at = 0.0
        self.epoch = 1
        self.seq = 0  # the last number given to a message for this session
        self.sent = 0  # the last one handed to a connection
        self.box: deque[tuple[int, float | None, bytes]] = deque()
        self.box_bytes = 0


@dataclass
class MemoryBackplane:
    """One process's directory: every peer is local. Answers every call at once."""

    limits: MailboxLimits
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))
    counters: DirectoryCounters = field(default_factory=DirectoryCounters)
    rooms: dict[str, dict[str, Member]] = field(default_factory=dict)
    _by_resume: dict[str, Member] = field(default_factory=dict)
    _members: dict[str, Member] = field(default_factory=dict)  # every peer id: O(1) fresh ids
    _buffered_bytes: int = 0  # across every mailbox
    _now: float = 0.0  # the latest clock reading the hub passed in

    def join(
        self,
        conn: int,
        room: str,
        resume: str | None,
        last: int | None,
        capacity: int,
        *,
        now: float,
    ) -> list[Event]:
        member = self._by_resume.get(resume or "")
        if member is not None and member.room == room:
            out: list[Event] = []
            if member.attached:  # the old connection is half dead: this one takes over
                out.append(Replaced(member.peer, member.epoch))
            member.attached = True
            member.epoch += 1
            self.counters.resumes += 1
            replay = self._replay(member, last)
            out.append(self._welcome(conn, member, resumed=True, replay=replay))
            return out
        members = self.rooms.setdefault(room, {})
        if len(members) >= capacity:
            if not members:
                del self.rooms[room]
            return [Refused(conn, *ROOM_FULL)]
        member = Member(self._new_peer_id(), room, secrets.token_urlsafe(24), now)
        joined = {"type": "peer-joined", "peer": member.peer}
        members[member.peer] = member
        self._members[member.peer] = member
        self._by_resume[member.resume] = member
        return [self._welcome(conn, member, resumed=False), Notify(room, member.peer, joined)]

    def route(
        self, conn: int, sender: str, room: str, target: str, message: Message
    ) -> list[Event]:
        member = self.rooms.get(room, {}).get(target)
        if member is None or target == sender:
            return [unknown_peer(conn, target)]
        return self._deliver(member, message)

    def leave(self, peer: str, epoch: int, now: float) -> list[Event]:
        member = self._members.get(peer)
        if member is None or member.epoch != epoch:
            return []
        return self._remove(member, now)

    def detach(self, peer: str, epoch: int, now: float) -> list[Event]:
        member = self._members.get(peer)
        if member is not None and member.epoch == epoch and member.attached:
            member.attached = False
            member.detached_at = now
        return []

    def tick(self, now: float) -> list[Event]:
        """End sessions away longer than the grace period; forget old history."""
        self._now = now
        out: list[Event] = []
        grace = self.limits.resume_grace
        for member in list(self._members.values()):
            if not member.attached and now - member.detached_at >= grace:
                self.counters.sessions_expired += 1
                out += self._remove(member, now)
            else:
                self._forget_history(member, now)
        return out

    async def end_away(self, peer: str, now: float) -> tuple[bool, list[Event]]:
        """See :class:`Backplane` (no I/O here: answered at once)."""
        member = self._members.get(peer)
        if member is None or member.attached:
            return False, []
        return True, self._remove(member, now)

    def metrics(self) -> dict[str, float]:
        members = self._members.values()
        return {
            "signal_rooms": len(self.rooms),
            "signal_sessions": len(self._members),
            "signal_sessions_away": sum(1 for m in members if not m.attached),
            "signal_buffered_bytes": self._buffered_bytes,
            **self.counters.samples(),
        }

    # -- helpers -----------------------------------------------------------------------------

    def _welcome(
        self, conn: int, member: Member, *, resumed: bool, replay: tuple[bytes, ...] = ()
    ) -> Welcome:
        peers = tuple(p for p in self.rooms.get(member.room, {}) if p != member.peer)
        return Welcome(
            conn,
            member.peer,
            member.room,
            member.resume,
            resumed,
            peers,
            replay,
            member.epoch,
        )

    def _replay(self, member: Member, last: int | None) -> tuple[bytes, ...]:
        """What a resumed session is owed: after ``last`` if the client said, else what came
        while it was away; what the client has is dropped from the mailbox."""
        after = member.sent if last is None else min(max(last, 0), member.seq)
        box = member.box
        while box and box[0][0] <= after:
            self._drop_oldest(member)
        member.sent = member.seq
        return tuple(text for _, _, text in box)

    def _deliver(self, member: Member, message: Message) -> list[Event]:
        member.seq += 1
        message = {**message, "seq": member.seq}
        try:
            text = encode(message)
        except (ValueError, RecursionError):  # kept out by parsing; never the sender's failure
            self.counters.unencodable += 1
            return []
        size = len(text)
        limits = self.limits
        fits = size <= limits.resume_buffer_bytes
        if fits:
            self._make_room(member, size)
            fits = self._buffered_bytes + size <= limits.max_buffered_bytes
        if member.attached:
            # Live: kept for a resume that says ``last`` only where it fits.
            if fits:
                self._keep(member, text, self._now)
            member.sent = member.seq
            self.counters.signals_routed += 1
            return [Deliver(member.peer, message)]
        if not fits:
            self.counters.buffer_dropped += 1
            return []
        self._keep(member, text, None)
        self.counters.signals_buffered += 1
        return []

    def _make_room(self, member: Member, size: int) -> None:
        """Drop the oldest of ``member``'s mailbox until ``size`` more bytes fit its bounds."""
        box, limits = member.box, self.limits
        while box and (
            len(box) >= limits.resume_buffer or member.box_bytes + size > limits.resume_buffer_bytes
        ):
            if box[0][1] is None:  # an undelivered message: that is a loss
                self.counters.buffer_dropped += 1
            self._drop_oldest(member)

    def _keep(self, member: Member, text: bytes, delivered_at: float | None) -> None:
        member.box.append((member.seq, delivered_at, text))
        member.box_bytes += len(text)
        self._buffered_bytes += len(text)

    def _drop_oldest(self, member: Member) -> None:
        _, _, text = member.box.popleft()
        member.box_bytes -= len(text)
        self._buffered_bytes -= len(text)

    def _forget_history(self, member: Member, now: float) -> None:
        box = member.box
        while box and box[0][1] is not None and now - box[0][1] >= HISTORY_SECONDS:
            self._drop_oldest(member)

    def _remove(self, member: Member, now: float) -> list[Event]:
        self.counters.durations.observe(now - member.born)
        while member.box:
            self._drop_oldest(member)
        self._by_resume.pop(member.resume, None)
        self._members.pop(member.peer, None)
        members = self.rooms.get(member.room)
        if members is None or members.pop(member.peer, None) is None:
            return []
        if not members:
            del self.rooms[member.room]
            return []
        return [Notify(member.room, member.peer, {"type": "peer-left", "peer": member.peer})]

    def _new_peer_id(self) -> str:
        while True:
            peer = new_peer_id(self.rng)
            if peer not in self._members:
                return peer


def new_peer_id(rng: random.Random) -> str:
    """A peer id of the contract's form (``p-`` and 12 hex digits)."""
    return f"p-{rng.getrandbits(48):012x}"


def decode_replay(texts: tuple[bytes, ...]) -> list[Message]:
    """The replayed messages as dicts (they were encoded by :func:`encode`)."""
    return [json.loads(text) for text in texts]
