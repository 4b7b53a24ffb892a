"""A node's mirror of the sessions attached to it, for the Redis backplane (sans-IO).

What the node's channel brings (``{"d": PEER, "m": MESSAGE}`` deliveries,
``{"n": ROOM, "p": PEER, "m": MESSAGE}`` membership changes, ``{"x": PEER, "e": EPOCH}``
take-overs; see :mod:`~secureconnect.signal.redis_lua`) becomes backplane events here:

* each session's highest ``seq`` drops a delivery that its join's replay already held;
* each session's set of peers it was told about makes ``peer-joined``/``peer-left`` reach it
  once, whichever of the join's reply and the channel message is read first (they arrive on two
  connections);
* a delivery for a peer whose join reply has not been read yet waits :data:`EARLY_SECONDS` (at
  most :data:`EARLY_MAX` of them, the oldest dropped), and recent membership changes are kept as
  long, for a join whose reply comes after them.

Rooms are indexed, so a membership change costs the room's local sessions, not the node's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from secureconnect.signal.backplane import Deliver, Event, Message, Replaced

EARLY_SECONDS = 5.0
EARLY_MAX = 4096


@dataclass(slots=True)
class LocalSession:
    """A session attached on this node."""

    room: str
    epoch: int
    resume_sha: str
    seq: int = 0  # the highest ``seq`` handed to it
    known: set[str] = field(default_factory=set)  # the peers it was told are in the room


@dataclass
class Mirror:
    """The sessions attached here, by peer id and by room; see the module docstring."""

    sessions: dict[str, LocalSession] = field(default_factory=dict)
    rooms: dict[str, set[str]] = field(default_factory=dict)
    _early: deque[tuple[float, str, Message]] = field(default_factory=deque)

    def add(self, peer: str, session: LocalSession, now: float) -> list[Event]:
        """``peer`` joined (or resumed) here: what the channel brought for it meanwhile."""
        self.sessions[peer] = session
        self.rooms.setdefault(session.room, set()).add(peer)
        events: list[Event] = []
        for stamp, target, message in self._early:
            if now - stamp >= EARLY_SECONDS:
                continue
            if target == peer:
                events += self._signal_for(peer, session, message)
            elif not target and message["n"] == session.room:
                events += self._tell(peer, session, str(message["p"]), message["m"])
        return events

    def remove(self, peer: str, epoch: int | None = None) -> LocalSession | None:
        """Forget ``peer`` (only if attached with ``epoch``, when given); what was forgotten."""
        session = self.sessions.get(peer)
        if session is None or (epoch is not None and session.epoch != epoch):
            return None
        del self.sessions[peer]
        peers = self.rooms.get(session.room)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self.rooms[session.room]
        return session

    def channel(self, message: dict[str, Any], now: float) -> list[Event]:
        """One message of the node's channel, parsed."""
        if "d" in message:
            peer = str(message["d"])
            session = self.sessions.get(peer)
            if session is not None:
                return self._signal_for(peer, session, message["m"])
            self._keep(now, peer, message["m"])
            return []
        if "n" in message:
            self._keep(now, "", message)
            return self.membership(str(message["n"]), str(message["p"]), message["m"])
        if "x" in message:
            peer, epoch = str(message["x"]), int(message["e"])
            if self.remove(peer, epoch) is not None:
                return [Replaced(peer, epoch)]
        return []

    def membership(self, room: str, subject: str, message: Message) -> list[Event]:
        """``peer-joined``/``peer-left`` of ``subject`` for the sessions of ``room`` here that
        have not been told yet."""
        events: list[Event] = []
        for peer in self.rooms.get(room, ()):
            events += self._tell(peer, self.sessions[peer], subject, message)
        return events

    def converge(self, room: str, members: set[str]) -> list[Event]:
        """Tell the sessions of ``room`` here what changed from what they know to ``members``."""
        events: list[Event] = []
        for peer in sorted(self.rooms.get(room, ())):
            session = self.sessions[peer]
            for other in sorted((members - {peer}) - session.known):
                events += self._tell(peer, session, other, {"type": "peer-joined", "peer": other})
            for other in sorted(session.known - members):
                events += self._tell(peer, session, other, {"type": "peer-left", "peer": other})
        return events

    def forget_early(self, now: float) -> None:
        while self._early and now - self._early[0][0] >= EARLY_SECONDS:
            self._early.popleft()

    def _keep(self, now: float, target: str, message: Message) -> None:
        self._early.append((now, target, message))
        if len(self._early) > EARLY_MAX:
            self._early.popleft()

    @staticmethod
    def _signal_for(peer: str, session: LocalSession, message: Message) -> list[Event]:
        seq = message.get("seq")
        if isinstance(seq, int):
            if seq <= session.seq:
                return []  # in the join's replay already
            session.seq = seq
        return [Deliver(peer, message)]

    @staticmethod
    def _tell(peer: str, session: LocalSession, subject: str, message: Message) -> list[Event]:
        joined = message.get("type") == "peer-joined"
        if subject == peer or (subject in session.known) == joined:
            return []
        if joined:
            session.known.add(subject)
        else:
            session.known.discard(subject)
        return [Deliver(peer, message)]
