"""One TURN request sequence played against the appliance: :class:`Play`.

:class:`~turnharness.Harness` owns the server and checks the invariants; a :class:`Play` is one
:class:`~turnseq.Case` on fresh client sockets. It opens each slot's connection when first
used, encodes every op with the nonce of the slot's address and what earlier answers said
(relayed addresses, reservation tokens), sends a burst as datagrams or as a stream cut where the
step says, reads the answers (bounded by :data:`ANSWER_WAIT`, or not at all before the next step
when the step says so), and looks at the server after every step: the log for crashes and the
descriptor count against the quota bound (the ``no-crash`` and ``fd-bounded`` invariants).
Its :meth:`Play.cleanup` deletes whatever the fuzzer's user holds, so that the checks after the
case can expect the baseline.

Answers are only tallied, never judged. One thing is tracked with care: an Allocate with the
EVEN-PORT R bit whose answer never came (its connection closed first) may legitimately hold a
reservation for 30 s whose token nobody knows; :meth:`Play.forget` tells the harness, which
allows for it until it must have expired.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from turnseq import Case, Op, Step, ends_connection, is_stream
from turnwire import (
    REQUESTED_UDP,
    Conn,
    Credential,
    Session,
    UdpConn,
    channel_data,
    decode,
    error_code,
    exception_summary,
    fd_count,
    indication,
    is_restart,
    peer_attribute,
    relayed_address,
    request,
)

from secureconnect.netaddr import Address
from secureconnect.stun import AttrType, MessageClass, Method

if TYPE_CHECKING:
    from turnharness import Harness

A = AttrType
SECRET = "adversarial-secret"
USER_QUOTA = 3
RESERVATION_SECONDS = 30 + 3  # the server's reservation lifetime, plus its tick and a margin
SETTLE = 5.0  # seconds the descriptor count may take to come down (connections closing)
ANSWER_WAIT = 0.3  # seconds to wait for the answers to one burst
BOGUS_TOKEN = b"\x00bogus\x00\x01"
DENIED_PEER: Address = ("10.0.0.1", 9)  # private: the default denylist refuses it (403)
_METHODS: dict[int, str] = {
    Method.ALLOCATE: "Allocate",
    Method.REFRESH: "Refresh",
    Method.CREATE_PERMISSION: "CreatePermission",
    Method.CHANNEL_BIND: "ChannelBind",
    Method.BINDING: "Binding",
}


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with the evidence."""

    invariant: str
    detail: str
    log: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"[{self.invariant}] {self.detail}"
        for line in self.log[:4]:
            text += f"\n      log: {line.strip()[:400]}"
            if "Traceback" in line:
                text += f"\n      exception: {exception_summary(line)}"
        return text


@dataclass
class Slot:
    """A fuzzing client: its current connection, the ones it left, what it sent."""

    transport: str
    host: str  # the client's IP: nonces are per client address
    conn: Conn | None = None
    retired: list[Conn] = field(default_factory=list)
    history: list[bytes] = field(default_factory=list)
    relayed: Address | None = None
    #: requests sent and not answered yet: transaction id -> whether it asked for a reservation
    pending: dict[bytes, bool] = field(default_factory=dict)


def allowing(unknown: int) -> str:
    if not unknown:
        return ""
    return f" (allowing for {unknown} reservation(s) made by requests never answered)"


def reserves(data: bytes) -> bool:
    """Whether request ``data`` is an Allocate whose EVEN-PORT has the R bit."""
    message = decode(data)
    if message is None or message.method != Method.ALLOCATE:
        return False
    even = message.get(A.EVEN_PORT)
    return even is not None and bool(even[:1]) and bool(even[0] & 0x80)


def is_request(data: bytes) -> bool:
    """Whether ``data`` is a STUN request (type bits 00, class bits C1 C0 = 00), which the
    server answers."""
    return len(data) >= 20 and data[0] >> 6 == 0 and not data[0] & 0x01 and not data[1] & 0x10


class Play:
    """One case being played: its slots, the tokens it was given, what it found."""

    def __init__(self, harness: Harness, case: Case) -> None:
        self.h = harness
        self.case = case
        assert harness.endpoints is not None
        self.slots = [Slot(t, harness.endpoints.host_for(t)) for t in case.transports]
        self.tokens: list[bytes] = []
        self.streams = 0
        self.played = 0
        self.crashed = False
        self.violations: list[Violation] = []
        self.answers: Counter[str] = Counter()
        self.credential = Credential.rest(SECRET, "fuzz")
        self.intruder = Credential.rest(SECRET, "intruder")

    def violate(self, invariant: str, detail: str, log: tuple[str, ...] = ()) -> None:
        self.violations.append(Violation(invariant, detail, log))

    def check_log(self) -> None:
        problems = self.h.new_problems()
        status = self.h.running.proc.poll() if self.h.running else None
        if problems:
            restarted = any(is_restart(line) for line in problems)
            what = "a component crashed and was restarted" if restarted else "errors were logged"
            self.violate("no-crash", f"{what} (after step {self.played})", tuple(problems))
            self.crashed = self.crashed or restarted
        if status is not None:
            self.violate("no-crash", f"the appliance exited with status {status}")
            self.crashed = True

    def steps(self) -> None:
        for step in self.case.steps:
            try:
                self.step(step)
            except OSError as exc:  # cannot even connect: the server is down
                self.violate("no-crash", f"step {self.played + 1}: cannot reach the server: {exc}")
            self.played += 1
            time.sleep(0.01)  # let the log reader catch up before the look below
            self.check_log()
            if self.crashed or self.violations:
                return
            fds = fd_count(self.h.pid)
            extra = self.h.allowance()
            if fds > self.h.baseline + 2 * USER_QUOTA + self.streams + 1 + extra:
                self.violate(
                    "fd-bounded",
                    f"{fds} descriptors open after step {self.played}: more than the baseline "
                    f"{self.h.baseline} + 2 x user_quota {USER_QUOTA} + {self.streams} "
                    f"connections + 1 (relay sockets held beyond the user's quota)"
                    f"{allowing(extra)}",
                )
                return

    def conn(self, slot: Slot) -> Conn:
        if slot.conn is not None and not slot.conn.alive:
            slot.retired.append(slot.conn)
            slot.conn = None
        if slot.conn is None:
            if is_stream(slot.transport):
                self.streams += 1
            self.forget(slot)
            slot.conn = self.h.open(slot.transport)
            slot.relayed = None
        return slot.conn

    def step(self, step: Step) -> None:
        slot = self.slots[step.client]
        stream = is_stream(slot.transport)
        ends = any(ends_connection(op, stream) for op in step.ops)
        if ends and slot.conn is not None and slot.conn.alive:
            # Answers still due (a step that did not wait) are read before the connection
            # goes: a reservation token among them must not be lost (see turnseq._ends_once).
            self.await_answers(slot, slot.conn)
        conn = self.conn(slot)
        pieces: list[bytes] = []
        for op in step.ops:
            if op.kind == "pause":
                time.sleep(op.seconds)  # alone in its step: nothing goes out meanwhile
                continue
            data = None if op.kind == "close" else self.encode(op, slot, stream)
            if data is None:
                continue
            pieces.extend([data] * op.repeat)
            if is_request(data):
                slot.pending[data[8:20]] = reserves(data)  # it will be answered
                slot.history.append(data)
        close = step.ops[-1] if step.ops[-1].kind == "close" else None
        self.send(conn, step, pieces, close)
        if close is not None and stream:
            conn.close(reset=close.reset)
        elif step.wait or close is not None:
            self.await_answers(slot, conn)
        else:
            for frame in conn.receive(0.0):
                self.absorb(slot, frame)
        if close is not None:
            # A UDP client that goes away: its socket closes too (relayed data then meets a
            # closed port); cleanup deletes its allocation from a socket bound to the same port.
            conn.close()
            slot.retired.append(conn)
            slot.conn = None
            self.forget(slot)

    def forget(self, slot: Slot) -> None:
        """``slot``'s connection is gone with requests unanswered: an Allocate among them that
        asked for a reservation may hold one, with a token nobody will learn, for 30 s (RFC
        8656 §7.2). Legitimate; the harness allows for it until it must have expired."""
        for asked in slot.pending.values():
            if asked:
                self.h.unknown_reservations.append(time.monotonic() + RESERVATION_SECONDS)
        slot.pending.clear()

    def send(self, conn: Conn, step: Step, pieces: list[bytes], close: Op | None) -> None:
        """A burst: datagrams one by one, or a stream's bytes cut where the step says (a
        close may leave half a message behind)."""
        if not is_stream(self.slots[step.client].transport):
            for piece in pieces:
                conn.send(piece)
            return
        blob = b"".join(pieces)
        if close is not None and close.partial:
            blob += request(Method.BINDING, close.tid)[:13]
        conn.send_split(blob, [len(blob) * c // 1000 for c in step.cuts], step.gap)

    def await_answers(self, slot: Slot, conn: Conn) -> None:
        """Read what came back: until every pending request of ``slot`` was answered (bounded
        by ANSWER_WAIT), or just what is already there when none is pending."""
        deadline = time.monotonic() + ANSWER_WAIT
        while True:
            left = max(0.0, deadline - time.monotonic()) if slot.pending else 0.0
            for frame in conn.receive(left):
                self.absorb(slot, frame)
            if not slot.pending or not conn.alive or time.monotonic() >= deadline:
                return

    def absorb(self, slot: Slot, frame: bytes) -> None:
        message = decode(frame)
        if message is None:
            self.answers["ChannelData"] += 1
            return
        if message.cls is MessageClass.INDICATION:
            self.answers["Data indication"] += 1
            return
        slot.pending.pop(message.transaction_id, None)
        code = error_code(message)
        self.answers[f"{_METHODS.get(message.method, hex(message.method))} {code or 'ok'}"] += 1
        if message.method == Method.ALLOCATE and code == 0:
            slot.relayed = relayed_address(message)
            token = message.get(A.RESERVATION_TOKEN)
            if token is not None:
                self.tokens.append(token)
        nonce = message.get(A.NONCE)
        if code == 438 and nonce is not None:
            self.h.nonces[slot.host] = nonce

    def peer(self, name: str, slot: Slot) -> Address:
        assert self.h.endpoints is not None
        echo = self.h.echo
        peers: dict[str, Address] = {
            "echo": echo,
            "echo6": self.h.echo6,
            "bystander": self.h.bystanders[0].relayed,
            "own": slot.relayed or echo,
            "denied": DENIED_PEER,
            "server": (self.h.endpoints.host, self.h.endpoints.port),
            "port0": (echo[0], 0),
            "mapped": ("::ffff:127.0.0.1", echo[1]),
        }
        return peers[name]

    def encode(self, op: Op, slot: Slot, stream: bool) -> bytes | None:  # noqa: PLR0911
        """The wire bytes of ``op`` for ``slot`` now (None: nothing to send)."""
        k, tid = op.kind, op.tid
        if k in ("allocate", "refresh", "intruder", "permission", "bind"):
            return self.encode_request(op, slot)
        payload = b"\xa5" * op.size
        if k == "send":
            attrs = [peer_attribute(self.peer(op.peers[0], slot), tid), (A.DATA, payload)]
            return indication(Method.SEND, tid, attrs)
        if k == "data":
            return channel_data(op.channel, payload, stream=stream)
        if k == "binding":
            return request(Method.BINDING, tid)
        if k == "unauth":
            return request(Method.ALLOCATE, tid, [(A.REQUESTED_TRANSPORT, REQUESTED_UDP)])
        if k == "retransmit":
            return slot.history[-op.back] if len(slot.history) >= op.back else None
        if k == "replay" and op.back < len(self.slots) and self.slots[op.back] is not slot:
            other = self.slots[op.back].history
            return other[-1] if other else None
        return None

    def encode_request(self, op: Op, slot: Slot) -> bytes:
        """An authenticated Allocate, Refresh, CreatePermission or ChannelBind."""
        k, tid, nonce = op.kind, op.tid, self.h.nonces[slot.host]
        if k == "allocate":
            attrs = [(int(A.REQUESTED_TRANSPORT), REQUESTED_UDP)]
            if op.lifetime is not None:
                attrs.append((A.LIFETIME, op.lifetime.to_bytes(4, "big")))
            if op.even is not None:
                attrs.append((A.EVEN_PORT, bytes((op.even,))))
            if op.family is not None:
                attrs.append((A.REQUESTED_ADDRESS_FAMILY, bytes((op.family, 0, 0, 0))))
            if op.token is not None:
                last = op.token == "last" and self.tokens
                attrs.append((A.RESERVATION_TOKEN, self.tokens[-1] if last else BOGUS_TOKEN))
            if op.dont_fragment:
                attrs.append((A.DONT_FRAGMENT, b""))
            return request(Method.ALLOCATE, tid, attrs, self.credential, nonce)
        if k in ("refresh", "intruder"):
            attrs = []
            if op.lifetime is not None:
                attrs.append((A.LIFETIME, op.lifetime.to_bytes(4, "big")))
            if op.family is not None:
                attrs.append((A.REQUESTED_ADDRESS_FAMILY, bytes((op.family, 0, 0, 0))))
            who = self.credential if k == "refresh" else self.intruder
            return request(Method.REFRESH, tid, attrs, who, nonce)
        if k == "permission":
            attrs = [peer_attribute(self.peer(p, slot), tid) for p in op.peers]
            return request(Method.CREATE_PERMISSION, tid, attrs, self.credential, nonce)
        attrs = [
            (A.CHANNEL_NUMBER, op.channel.to_bytes(2, "big") + b"\0\0"),
            peer_attribute(self.peer(op.peers[0], slot), tid),
        ]
        return request(Method.CHANNEL_BIND, tid, attrs, self.credential, nonce)

    def cleanup(self) -> None:
        """Delete what the fuzzer's user holds: Refresh 0 on every UDP 5-tuple (closed ones
        reopened on the same port), close every connection, redeem every reservation token
        (then delete that allocation too)."""
        assert self.h.endpoints is not None
        for slot in self.slots:
            conn = slot.conn
            if conn is not None and conn.alive and not self.crashed:
                self.await_answers(slot, conn)  # late answers may carry a reservation token
            self.forget(slot)
            for each in [*slot.retired, *([conn] if conn else [])]:
                if not is_stream(slot.transport) and not self.crashed:
                    self._delete_over(each, slot)
                each.close()
        if self.crashed:
            return
        self.check_reservations()
        for token in self.tokens:
            udp = UdpConn(self.h.udp_server())
            session = Session(udp, self.credential)
            session.nonce = self.h.nonces["127.0.0.1"]
            answer = session.allocate((A.RESERVATION_TOKEN, token))
            if answer is not None and error_code(answer) == 0:
                session.refresh(0)
            udp.close()

    def check_reservations(self) -> None:
        """``fd-bounded`` once more, tighter: with its allocations deleted and its connections
        closed, all the fuzzer's user can still make the server hold is reservations, and
        those count against its quota (or end with their allocation): at most ``user_quota``
        descriptors above the baseline, within SETTLE seconds (streams take a moment)."""
        limit = self.h.baseline + USER_QUOTA + self.h.allowance()
        deadline = time.monotonic() + SETTLE
        while (fds := fd_count(self.h.pid)) > limit and time.monotonic() < deadline:
            time.sleep(0.02)
        if fds > limit:
            self.violate(
                "fd-bounded",
                f"{fds} descriptors open once the fuzzer had deleted its allocations and closed "
                f"its connections (before redeeming its {len(self.tokens)} reservation tokens): "
                f"more than the baseline {self.h.baseline} + user_quota {USER_QUOTA}, so its "
                f"user holds more reserved relay ports than its quota"
                f"{allowing(self.h.allowance())}",
            )

    def _delete_over(self, conn: Conn, slot: Slot) -> None:
        """Refresh 0 from ``conn``'s 5-tuple (a closed socket's port is bound again)."""
        assert self.h.endpoints is not None
        if not conn.alive:
            try:
                conn = UdpConn((slot.host, self.h.endpoints.port), bind=conn.local)
            except OSError:  # the port was taken meanwhile: the allocation expires (2 s)
                return
        session = Session(conn, self.credential)
        session.nonce = self.h.nonces[slot.host]
        session.transact(Method.REFRESH, [(A.LIFETIME, bytes(4))], timeout=1.0)
        for frame in session.other:  # late answers may still carry a reservation token
            self.absorb(slot, frame)
        conn.close()
