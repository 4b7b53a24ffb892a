"""Replay TURN request sequences against the real appliance and check invariants after each.

:class:`Harness` starts ``secureconnect run turn`` as a subprocess on loopback (UDP, TCP and TLS;
IPv4 and IPv6 relays; RFC 5766 channel numbers; a small per-user quota so that quota paths are
reached; no 401 rate limit so that every request is answered), two UDP echo peers (127.0.0.1 and
::1) and three *bystanders*: well-behaved clients, one per transport, each holding an allocation
with a channel to the echo peer from before the fuzzing. :meth:`Harness.run` plays one
:class:`~turnseq.Case` with a fresh set of client sockets and then checks:

``no-crash``
    no component crashed or was restarted, nothing was logged with a traceback or at level
    error, the process still runs (checked after every step, and at the end);
``fd-bounded``
    after every step the server holds at most ``baseline + 2 x user_quota + streams + 1``
    descriptors: whatever the fuzzer's user does, the relay sockets it can make the server hold
    (allocations, each with at most one reserved port) are bounded by its quota, plus one per
    connection it opened; and once the fuzzer has deleted its allocations and closed its
    connections, at most ``baseline + user_quota`` (what reservations it still holds count
    against its quota);
``fd-baseline``
    once the fuzzer has deleted its allocations (Refresh 0 on every UDP 5-tuple it used),
    redeemed and deleted every reservation token it was given and closed its connections, the
    descriptor count is back to the baseline within :data:`SETTLE` seconds;
``bystanders``
    every bystander still refreshes its allocation, re-binds its channel and gets its
    ChannelData back from the echo peer through the relay;
``quota``
    the fuzzer's user can hold ``user_quota`` allocations again, and a fresh user can allocate
    over UDP, TCP and TLS.

The first two are checked while the case plays (:class:`turnplay.Play`), the others after it.
The appliance runs with ``turn.default_lifetime=2`` so that allocations which do not ask for
more expire in the middle of cases. Reservations that requests never answered may hold (their
connection closed first) are allowed for, one descriptor and one quota slot each, until they
must have expired (see :meth:`turnplay.Play.forget`).

Whether a response is a success or an error does not matter; answers are only tallied. After a
run that broke an invariant the appliance is restarted, so every run starts from a clean server
(and the shrinker's replays are independent).
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from appliance import ApplianceNotReady, Running, free_port, run_appliance
from turnplay import SECRET, SETTLE, USER_QUOTA, Play, Violation, allowing
from turnseq import Case
from turnwire import (
    Conn,
    Credential,
    Endpoints,
    Session,
    UdpConn,
    error_code,
    fd_count,
    problem_lines,
    relayed_address,
    trusting_context,
    udp_echo,
)

from secureconnect.netaddr import Address
from secureconnect.stun import AttrType

A = AttrType
CHANNEL = 0x4000  # the bystanders' channel to the echo peer
SETTINGS = (
    "turn.tls=true",
    'turn.listen=["127.0.0.1", "::1"]',
    f'turn.secrets=["{SECRET}"]',
    "turn.rfc5766_channels=true",
    "turn.unauthorized_rate=0",
    f"turn.user_quota={USER_QUOTA}",
    "turn.total_quota=64",
    "turn.max_permissions=4",
    "turn.max_channels=4",
    # Allocations that do not ask for more live 2 s: they expire (and their relay tasks end)
    # in the middle of the cases, a transition a 600 s default would never show.
    "turn.default_lifetime=2",
    "general.drain_timeout=0.5",
)


class HarnessError(RuntimeError):
    """The harness itself could not set up (the appliance did not start, a bystander could not
    allocate on a fresh server): not a finding, a broken environment."""


@dataclass
class Outcome:
    """What one run did: the broken invariants, the steps played, the answers tallied."""

    violations: list[Violation]
    steps: int
    answers: Counter[str] = field(default_factory=Counter)


@dataclass
class Bystander:
    """A client that allocated before the fuzzing and must not notice it."""

    transport: str
    session: Session
    relayed: Address


class Harness:
    """The appliance, echo peers and bystanders; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self._outer = ExitStack()
        self._inner = ExitStack()
        self.running: Running | None = None
        self.endpoints: Endpoints | None = None
        self.echo: Address = ("127.0.0.1", 0)
        self.echo6: Address = ("::1", 0)
        self.bystanders: list[Bystander] = []
        self.baseline = 0
        self.nonces: dict[str, bytes] = {}  # per client IP (127.0.0.1, ::1)
        self.restarts = 0  # appliance restarts done by the harness (after violations)
        #: until when reservations nobody can redeem may legitimately still be held (see
        #: Play.forget): each one allows one descriptor and one quota slot more
        self.unknown_reservations: list[float] = []
        self._log_seen = 0
        self._fresh = 0

    def __enter__(self) -> Harness:
        self.echo = self._outer.enter_context(udp_echo("127.0.0.1"))
        self.echo6 = self._outer.enter_context(udp_echo("::1"))
        try:
            self.start()
        except BaseException:
            self._outer.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._outer.close()

    @property
    def pid(self) -> int:
        assert self.running is not None
        return self.running.proc.pid

    def start(self) -> None:
        """Start the appliance (up to three tries: free ports can race), set up the bystanders,
        learn the nonces of both client addresses, take the descriptor baseline."""
        for attempt in range(3):
            port, tls_port = free_port(), free_port()
            settings = [f"turn.port={port}", f"turn.tls_port={tls_port}", *SETTINGS]
            try:
                self.running = self._inner.enter_context(
                    run_appliance(self.workdir, "turn", state_dir=self.state_dir, settings=settings)
                )
                break
            except ApplianceNotReady:
                self._inner.close()
                if attempt == 2:
                    raise
        context = trusting_context(self.state_dir)
        self.endpoints = Endpoints("127.0.0.1", port, tls_port, context)
        self._log_seen = 0
        self.bystanders = [self._bystander(t) for t in ("udp", "tcp", "tls")]
        self.nonces = {"127.0.0.1": self.bystanders[0].session.nonce}
        v6 = Session(UdpConn(("::1", port)), Credential.rest(SECRET, "fuzz"))
        self.nonces["::1"] = v6.challenge()
        v6.conn.close()
        self.baseline = self._settled_fds()
        self.new_problems()  # start-up lines are no findings

    def stop(self) -> None:
        """Close the bystanders and stop the appliance (SIGTERM, bounded)."""
        for bystander in self.bystanders:
            bystander.session.conn.close()
        self.bystanders = []
        self._inner.close()
        self.running = None

    def restart(self) -> None:
        """A fresh appliance and fresh bystanders, after a run that broke an invariant."""
        self.stop()
        self.restarts += 1
        self.start()

    def _bystander(self, transport: str) -> Bystander:
        """A client with a 600 s allocation and a channel to the echo peer that works."""
        assert self.endpoints is not None
        session = Session(
            self.endpoints.open(transport), Credential.rest(SECRET, f"bystander-{transport}")
        )
        answer = session.allocate((A.LIFETIME, (600).to_bytes(4, "big")))
        relayed = relayed_address(answer) if answer is not None else None
        bound = session.channel_bind(CHANNEL, self.echo)
        if (
            relayed is None
            or bound is None
            or error_code(bound)
            or not session.echo(CHANNEL, b"hi")
        ):
            raise HarnessError(f"a {transport} bystander could not set up its relay")
        return Bystander(transport, session, relayed)

    def _settled_fds(self) -> int:
        """The descriptor count once two readings 50 ms apart agree (bounded)."""
        last = fd_count(self.pid)
        for _ in range(40):
            time.sleep(0.05)
            now = fd_count(self.pid)
            if now == last:
                return now
            last = now
        return last

    def allowance(self) -> int:
        """Reservations whose tokens were never learned that may still be held."""
        now = time.monotonic()
        self.unknown_reservations = [t for t in self.unknown_reservations if t > now]
        return len(self.unknown_reservations)

    def new_problems(self) -> list[str]:
        """Problem log lines (see turnwire.problem_lines) written since the last call."""
        assert self.running is not None
        lines = self.running.log[self._log_seen :]
        self._log_seen += len(lines)
        return problem_lines(lines)

    def open(self, transport: str) -> Conn:
        assert self.endpoints is not None
        return self.endpoints.open(transport)

    def run(self, case: Case) -> Outcome:
        """Play ``case``, clean up, check the invariants; restart the appliance if broken."""
        play = Play(self, case)
        try:
            play.steps()
        finally:
            play.cleanup()
        if not play.crashed:
            self._check(play)
        if play.violations:
            self.restart()
        return Outcome(play.violations, play.played, play.answers)

    # -- the invariants after a run --------------------------------------------------------

    def _check(self, play: Play) -> None:
        """The invariants checked after a case (see the module docstring)."""
        deadline = time.monotonic() + SETTLE
        while (fds := fd_count(self.pid)) > self.baseline + self.allowance() and (
            time.monotonic() < deadline
        ):
            time.sleep(0.02)
        if fds > self.baseline + self.allowance():
            play.violate(
                "fd-baseline",
                f"{fds} descriptors open {SETTLE:g} s after the fuzzer deleted its allocations, "
                f"redeemed its reservation tokens and closed its connections; {self.baseline} "
                f"before the sequence{allowing(self.allowance())}",
            )
        for bystander in self.bystanders:
            problem = self._bystander_problem(bystander)
            if problem:
                play.violate("bystanders", f"the {bystander.transport} bystander: {problem}")
        self._check_quota(play)
        play.check_log()

    def _bystander_problem(self, bystander: Bystander) -> str:
        """What is wrong with ``bystander``'s allocation or relay ("" if nothing)."""
        session = bystander.session
        session.other.clear()
        for what in ("Refresh", "ChannelBind"):
            if what == "Refresh":
                got = session.refresh(600)
            else:
                got = session.channel_bind(CHANNEL, self.echo)
            if got is None:
                return f"no answer to {what} (its allocation is gone)"
            if error_code(got):
                return f"{what} answered {error_code(got)} (its allocation is gone)"
        self._fresh += 1
        if not session.echo(CHANNEL, b"bystander-%d" % self._fresh):
            return "its ChannelData did not come back through the relay within 2 s"
        return ""

    def _check_quota(self, play: Play) -> None:
        """The fuzzer's user gets its whole quota again; fresh users allocate everywhere."""
        fuzz = play.credential
        sessions = [Session(UdpConn(self.udp_server()), fuzz) for _ in range(USER_QUOTA)]
        codes = []
        for session in sessions:
            session.nonce = self.nonces["127.0.0.1"]
            answer = session.allocate()
            codes.append("none" if answer is None else str(error_code(answer)))
        for session in sessions:
            if codes[sessions.index(session)] == "0":
                session.refresh(0)
            session.conn.close()
        if codes.count("0") < USER_QUOTA - self.allowance():
            play.violate(
                "quota",
                f"after cleanup the fuzzer's user got {codes.count('0')} of its {USER_QUOTA} "
                f"allocations (answers: {', '.join(codes)}){allowing(self.allowance())}",
            )
        for transport in ("udp", "tcp", "tls"):
            self._fresh += 1
            session = Session(self.open(transport), Credential.rest(SECRET, f"u{self._fresh}"))
            answer = session.allocate()
            if answer is None or error_code(answer):
                got = "no answer" if answer is None else f"error {error_code(answer)}"
                play.violate("quota", f"a fresh user could not allocate over {transport}: {got}")
            elif transport == "udp":
                session.refresh(0)
            session.conn.close()

    def udp_server(self) -> Address:
        assert self.endpoints is not None
        return self.endpoints.host, self.endpoints.port
