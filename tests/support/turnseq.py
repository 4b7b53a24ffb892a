"""Random TURN request sequences: the model, the generator and the shrinker.

The adversarial state-machine fuzzer (``tests/adversarial/test_turn_sequences.py``, and the
sequence phase of ``bench/fuzz.py``) sends *sequences* of valid, authenticated TURN messages and
checks invariants afterwards (:mod:`turnharness` runs them). This module is the pure part: what a
sequence is, how a seeded ``random.Random`` draws one, how a failing one is cut down to a
minimal reproduction, and how it is printed so that a human can replay it by hand.

A :class:`Case` has a few client slots (each a transport: ``udp``, ``tcp`` or ``tls``, or
``udp6``/``tcp6``/``tls6`` for an IPv6 client) and a list of :class:`Step`. A step is a
*burst*: one or more :class:`Op` sent back to back on one slot, as separate datagrams over UDP
and, over a stream, as one byte string that goes out in one segment or split at chosen offsets
(per mille of its length, so a case replays identically whatever the nonce's length) with a
small gap between the pieces. Usually the runner then waits for the burst's answers; a step
with ``wait=False`` lets the next one go out at once (bursts of several clients interleave).
Ops are abstract (``Refresh LIFETIME=0``, ``ChannelBind 0x4000 -> echo``): they are encoded
when sent, with the current nonce, the peers of this run and what earlier answers returned
(relayed addresses, reservation tokens). Transaction ids are drawn here, so a retransmission
is a real duplicate.

The generator mixes random ops with *motifs*: short patterns that make state machines change
state fast (Allocate then Refresh 0 in one burst, EVEN-PORT with the R bit then a delete, a
connection closed right after an Allocate), since that is where the known bugs were.

Shrinking (:func:`shrink`) is delta debugging on steps, then on the ops inside each step, then
on splits, waits and optional attributes, keeping a candidate when it still breaks the same
invariant; it is bounded by a deadline and a run count, because each try replays against the
real server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

TRANSPORTS = ("udp", "tcp", "tls")
#: other slots of a case may also be IPv6 clients (to [::1]): another nonce, another address
MIXED = (*TRANSPORTS, *TRANSPORTS, "udp6", "tcp6", "tls6")
#: where a peer-addressed op points (resolved at run time, see turnharness.Run.peer)
PEERS = ("echo", "echo", "echo", "echo6", "bystander", "own", "denied", "server", "port0", "mapped")
#: RFC 8656 channels, RFC 5766-only ones (the harness enables them), and invalid numbers
CHANNELS = (0x4000, 0x4000, 0x4001, 0x4FFF, 0x5000, 0x7FFF, 0x3FFF)
LIFETIMES = (None, None, 0, 0, 0, 1, 600, 3600, 0xFFFFFFFF)
FAMILIES = (None, None, None, None, 0x01, 0x02, 0x02, 0x03)


@dataclass(frozen=True)
class Op:
    """One message. ``kind`` is one of: allocate, refresh, permission, bind, send, data,
    binding, unauth, intruder, retransmit, replay, close (always last in its step), or pause
    (alone in its step: nothing is sent for ``seconds``)."""

    kind: str
    tid: bytes = bytes(12)
    lifetime: int | None = None  # LIFETIME (allocate, refresh, intruder)
    even: int | None = None  # the EVEN-PORT byte: 0x80 is the R bit (allocate)
    family: int | None = None  # REQUESTED-ADDRESS-FAMILY value (allocate, refresh)
    token: str | None = None  # RESERVATION-TOKEN: "last" seen, or "bogus" (allocate)
    dont_fragment: bool = False
    peers: tuple[str, ...] = ()  # permission: 1-3, bind/send: 1
    channel: int = 0x4000  # bind, data
    size: int = 0  # send, data: payload bytes
    back: int = 1  # retransmit: which earlier request; replay: which other slot
    reset: bool = False  # close with RST instead of FIN
    partial: bool = False  # close: leave half a message in the stream first
    repeat: int = 1  # send, data: that many copies in the burst (a flood)
    seconds: float = 0.0  # pause: how long nothing is sent (allocations of 2 s expire)

    @property
    def request(self) -> bool:
        """Whether the server answers it (so the runner waits for its transaction)."""
        return self.kind in ("allocate", "refresh", "permission", "bind", "binding", "unauth")

    def describe(self) -> str:  # noqa: PLR0911, PLR0912 - one spelling per kind
        k = self.kind
        if k == "allocate":
            parts = ["Allocate"]
            if self.even is not None:
                parts.append("EVEN-PORT(R)" if self.even & 0x80 else "EVEN-PORT")
            if self.family is not None:
                parts.append(f"FAMILY={self.family:#04x}")
            if self.token:
                parts.append(f"RESERVATION-TOKEN={self.token}")
            if self.lifetime is not None:
                parts.append(f"LIFETIME={self.lifetime}")
            if self.dont_fragment:
                parts.append("DONT-FRAGMENT")
            return " ".join(parts)
        if k == "refresh":
            fam = f" FAMILY={self.family:#04x}" if self.family is not None else ""
            life = f" LIFETIME={self.lifetime}" if self.lifetime is not None else ""
            return f"Refresh{life}{fam}"
        if k == "permission":
            return f"CreatePermission {','.join(self.peers)}"
        if k == "bind":
            return f"ChannelBind {self.channel:#06x}->{self.peers[0]}"
        times = f" x{self.repeat}" if self.repeat > 1 else ""
        if k == "send":
            return f"Send->{self.peers[0]} {self.size}B{times}"
        if k == "data":
            return f"ChannelData {self.channel:#06x} {self.size}B{times}"
        if k == "pause":
            return f"pause {self.seconds:g} s"
        if k == "binding":
            return "Binding"
        if k == "unauth":
            return "Allocate without credentials"
        if k == "intruder":
            return f"Refresh LIFETIME={self.lifetime} as another user"
        if k == "retransmit":
            return f"retransmit request -{self.back} (same transaction id)"
        if k == "replay":
            return f"replay the last request of slot c{self.back}"
        how = "RST" if self.reset else "FIN"
        return f"close ({how}{', after half a message' if self.partial else ''})"


@dataclass(frozen=True)
class Step:
    """A burst on one slot; ``cuts`` are per-mille offsets into a stream burst."""

    client: int
    ops: tuple[Op, ...]
    cuts: tuple[int, ...] = ()
    gap: float = 0.0  # seconds between the pieces of a split burst
    #: False: the next step goes out at once, before this one's answers (interleaving)
    wait: bool = True


def is_stream(transport: str) -> bool:
    """Whether a slot's transport (``udp``, ``tcp``, ``tls``, ``udp6``...) is a stream."""
    return not transport.startswith("udp")


def ends_connection(op: Op, stream: bool) -> bool:
    """Whether ``op`` ends its connection: a close, or on a stream ChannelData with a channel
    number below 0x4000 (its first bits say STUN, its length is no STUN length: no frame)."""
    return op.kind == "close" or (stream and op.kind == "data" and op.channel < 0x4000)


@dataclass(frozen=True)
class Case:
    """A whole sequence: the slots' transports and the steps."""

    transports: tuple[str, ...]
    steps: tuple[Step, ...]

    def describe(self) -> list[str]:
        lines = [f"clients: {', '.join(f'c{i}={t}' for i, t in enumerate(self.transports))}"]
        for n, step in enumerate(self.steps, 1):
            transport = self.transports[step.client]
            text = " + ".join(op.describe() for op in step.ops)
            how = ""
            stream = is_stream(transport)
            if stream and len(step.ops) > 1 and not step.cuts:
                how = " [one segment]"
            elif stream and step.cuts:
                gap = f", {step.gap * 1000:.0f} ms apart" if step.gap else ""
                how = f" [split at {', '.join(f'{c / 10:g}%' for c in step.cuts)}{gap}]"
            elif not stream and len(step.ops) > 1:
                how = " [back to back]"
            if not step.wait:
                how += " [next step without waiting for answers]"
            lines.append(f"{n:3d}. c{step.client}/{transport}: {text}{how}")
        return lines


# -- generation ------------------------------------------------------------------------------

_WEIGHTS: dict[str, int] = {
    "allocate": 16,
    "refresh": 12,
    "permission": 8,
    "bind": 9,
    "send": 6,
    "data": 9,
    "binding": 2,
    "unauth": 2,
    "intruder": 2,
    "retransmit": 7,
    "replay": 3,
}


def random_op(rng: random.Random, kind: str | None = None) -> Op:  # noqa: PLR0911 - per kind
    """One op of ``kind`` (drawn by weight when None) with random parameters."""
    if kind is None:
        kind = rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
    tid = rng.randbytes(12)
    if kind == "allocate":
        token = rng.choice((None, None, None, None, "last", "last", "bogus"))
        even = None if token else rng.choice((None, None, None, 0x00, 0x80, 0x80))
        return Op(
            kind,
            tid,
            lifetime=rng.choice((None, None, None, 1, 600, 0xFFFFFFFF)),
            even=even,
            family=None if token else rng.choice(FAMILIES),
            token=token,
            dont_fragment=rng.random() < 0.2,
        )
    if kind == "refresh":
        return Op(kind, tid, lifetime=rng.choice(LIFETIMES), family=rng.choice(FAMILIES[:6]))
    if kind == "permission":
        return Op(kind, tid, peers=tuple(rng.choice(PEERS) for _ in range(rng.randint(1, 3))))
    if kind == "bind":
        return Op(kind, tid, peers=(rng.choice(PEERS),), channel=rng.choice(CHANNELS))
    size = _size(rng)
    repeat = rng.choice((1, 1, 1, 1, 1, 1, 1, 1, 5, 200 if size <= 1500 else 2))
    if kind == "send":
        return Op(kind, tid, peers=(rng.choice(PEERS),), size=size, repeat=repeat)
    if kind == "data":
        return Op(kind, tid, channel=rng.choice(CHANNELS), size=size, repeat=repeat)
    if kind == "pause":
        # 3.2 s: the harness's allocations of 2 s have expired (the server ticks every second)
        return Op(kind, tid, seconds=rng.choice((1.0, 3.2)))
    if kind == "intruder":
        return Op(kind, tid, lifetime=rng.choice((0, 600)))
    if kind == "retransmit":
        return Op(kind, tid, back=rng.choice((1, 1, 1, 2, 3)))
    if kind == "replay":
        return Op(kind, tid, back=rng.randrange(3))
    return Op(kind, tid)


def _size(rng: random.Random) -> int:
    """Payload bytes: empty, odd (padding), typical, and rarely the largest a TURN message
    can carry (relayed back to a UDP client, it no longer fits a datagram)."""
    return rng.choices((0, 1, 3, 4, 100, 1200, 1500, 64000), weights=(2, 2, 2, 2, 4, 4, 2, 1))[0]


def close_op(rng: random.Random) -> Op:
    return Op("close", rng.randbytes(12), reset=rng.random() < 0.5, partial=rng.random() < 0.3)


def motif(rng: random.Random) -> list[Op]:  # noqa: PLR0911 - one return per pattern
    """A short pattern that moves an allocation through its states within one burst."""
    alloc = random_op(rng, "allocate")
    plain = replace(alloc, token=None)
    delete = Op("refresh", rng.randbytes(12), lifetime=0)
    reserve = replace(plain, even=0x80, family=None, tid=rng.randbytes(12))
    bind = Op("bind", rng.randbytes(12), peers=("echo",), channel=0x4000)
    data = Op("data", rng.randbytes(12), channel=0x4000, size=rng.choice((4, 100)))
    choice = rng.randrange(8)
    if choice == 0:
        return [plain, delete]
    if choice == 1:
        return [reserve, Op("refresh", rng.randbytes(12), lifetime=0)] * rng.randint(1, 3)
    if choice == 2:
        return [plain, bind, data, delete]
    if choice == 3:
        return [plain, random_op(rng, "permission"), random_op(rng, "send"), close_op(rng)]
    if choice == 4:
        return [Op("allocate", rng.randbytes(12), token="last")]
    if choice == 5:
        return [plain, replace(plain)]  # the same transaction id twice: a retransmission
    if choice == 6:
        return [delete, replace(delete, tid=rng.randbytes(12)), plain]
    return [plain, close_op(rng)]


def _ends_once(ops: list[Op], *, stream: bool) -> list[Op]:
    """``ops`` cut after the first op that ends the connection. On a stream such a burst is
    never answered, so a reservation it made would hold a port for 30 s (RFC 8656 §7.2) with a
    token nobody learned: legitimate, but the checks after the case would see a leak. So those
    bursts ask for EVEN-PORT without the R bit and replay nothing (a replayed request could be
    an Allocate with the R bit)."""
    ends = [i for i, op in enumerate(ops) if ends_connection(op, stream)]
    if not ends:
        return ops
    ops = ops[: ends[0] + 1]
    if not stream:
        return ops
    return [
        replace(op, even=0x00) if op.kind == "allocate" and (op.even or 0) & 0x80 else op
        for op in ops
        if op.kind != "replay"
    ]


def generate(rng: random.Random, primary: str, *, max_steps: int = 14, mix: float = 0.3) -> Case:
    """A random case: 1-3 slots (the first on ``primary``, others on another transport with
    probability ``mix``), 2-``max_steps`` bursts of 1-6 ops or a motif."""
    count = rng.choice((1, 2, 2, 3))
    transports = [primary] + [
        rng.choice(MIXED) if rng.random() < mix else primary for _ in range(count - 1)
    ]
    steps: list[Step] = []
    used: set[int] = set()
    for _ in range(rng.randint(2, max_steps)):
        client = rng.randrange(count)
        if rng.random() < 0.003:  # rare: each costs seconds of the budget
            steps.append(Step(client, (random_op(rng, "pause"),)))
        if rng.random() < 0.35:
            ops = motif(rng)
        else:
            ops = [random_op(rng) for _ in range(rng.choice((1, 1, 1, 2, 3, 6)))]
            if rng.random() < 0.06:
                ops.append(close_op(rng))
            if client not in used and rng.random() < 0.75:
                # a first burst usually allocates, so that later requests meet an allocation
                ops.insert(0, replace(random_op(rng, "allocate"), token=None))
        used.add(client)
        stream = is_stream(transports[client])
        ops = _ends_once(ops, stream=stream)
        cuts: tuple[int, ...] = ()
        gap = 0.0
        if stream and rng.random() < 0.5:
            cuts = tuple(sorted(rng.sample(range(1, 1000), rng.randint(1, 6))))
            gap = rng.choice((0.0, 0.0, 0.001, 0.003))
        steps.append(Step(client, tuple(ops), cuts, gap, wait=rng.random() > 0.2))
    return Case(tuple(transports), tuple(steps))


# -- shrinking -------------------------------------------------------------------------------


@dataclass
class Shrunk:
    """The smallest case found that still fails, and what it took."""

    case: Case
    runs: int
    seconds: float
    complete: bool  # False when the budget ran out before no smaller candidate failed


def shrink(
    case: Case, fails: Callable[[Case], bool], *, seconds: float, max_runs: int = 200
) -> Shrunk:
    """Delta debugging: drop chunks of steps (halves, quarters, ... single steps), then single
    ops of multi-op steps, then splits and optional attributes, while ``fails`` still says
    True; repeated until nothing more goes, bounded in time and runs. ``fails`` replays a
    candidate against a real server."""
    shrinker = _Shrinker(case, fails, time.monotonic() + seconds, max_runs)
    started = time.monotonic()
    progress = True
    while progress and not shrinker.spent():
        progress = shrinker.drop_steps()
        progress = shrinker.drop_ops() or progress
        progress = shrinker.simplify() or progress
    return Shrunk(
        _compact(shrinker.best), shrinker.runs, time.monotonic() - started, not shrinker.spent()
    )


class _Shrinker:
    """The passes of :func:`shrink` over its current best (smallest failing) case."""

    def __init__(
        self, case: Case, fails: Callable[[Case], bool], deadline: float, max_runs: int
    ) -> None:
        self.best = case
        self.fails = fails
        self.deadline = deadline
        self.max_runs = max_runs
        self.runs = 0

    def spent(self) -> bool:
        return self.runs >= self.max_runs or time.monotonic() >= self.deadline

    def attempt(self, candidate: Case) -> bool:
        """Replay ``candidate``; it becomes the best when it still fails."""
        if self.spent() or not candidate.steps:
            return False
        self.runs += 1
        if self.fails(candidate):
            self.best = candidate
            return True
        return False

    def drop_steps(self) -> bool:
        progress = False
        chunk = max(1, len(self.best.steps) // 2)
        while True:
            i = 0
            while i < len(self.best.steps):
                steps = self.best.steps[:i] + self.best.steps[i + chunk :]
                if self.attempt(replace(self.best, steps=steps)):
                    progress = True
                else:
                    i += chunk
            if chunk == 1:
                return progress
            chunk //= 2

    def drop_ops(self) -> bool:
        progress = False
        for s in range(len(self.best.steps)):
            o = 0
            while (
                s < len(self.best.steps)
                and len(self.best.steps[s].ops) > 1
                and o < len(self.best.steps[s].ops)
            ):
                step = self.best.steps[s]
                smaller = replace(step, ops=(*step.ops[:o], *step.ops[o + 1 :]))
                if self.attempt(_with_step(self.best, s, smaller)):
                    progress = True
                else:
                    o += 1
        return progress

    def simplify(self) -> bool:
        progress = False
        for s in range(len(self.best.steps)):
            if self.best.steps[s].cuts:
                plain = replace(self.best.steps[s], cuts=(), gap=0.0)
                progress = self.attempt(_with_step(self.best, s, plain)) or progress
            if not self.best.steps[s].wait:
                waits = replace(self.best.steps[s], wait=True)
                progress = self.attempt(_with_step(self.best, s, waits)) or progress
            for o in range(len(self.best.steps[s].ops)):
                for simpler in _simpler(self.best.steps[s].ops[o]):
                    step = self.best.steps[s]
                    ops = (*step.ops[:o], simpler, *step.ops[o + 1 :])
                    progress = self.attempt(_with_step(self.best, s, replace(step, ops=ops))) or (
                        progress
                    )
        return progress


def _simpler(op: Op) -> list[Op]:
    """Variants of ``op`` with one optional attribute fewer (or a smaller payload)."""
    variants = []
    if op.kind == "allocate":
        if op.even is not None:
            variants.append(replace(op, even=None))
        if op.family is not None:
            variants.append(replace(op, family=None))
        if op.lifetime is not None:
            variants.append(replace(op, lifetime=None))
        if op.dont_fragment:
            variants.append(replace(op, dont_fragment=False))
    if op.kind == "refresh" and op.family is not None:
        variants.append(replace(op, family=None))
    if op.kind in ("send", "data") and op.size > 4:
        variants.append(replace(op, size=4))
    if op.kind == "permission" and len(op.peers) > 1:
        variants.extend(replace(op, peers=(peer,)) for peer in op.peers)
    if op.kind == "close" and op.partial:
        variants.append(replace(op, partial=False))
    return variants


def _with_step(case: Case, index: int, step: Step) -> Case:
    return replace(case, steps=(*case.steps[:index], step, *case.steps[index + 1 :]))


def _compact(case: Case) -> Case:
    """Renumber slots so that unused ones disappear from the printout (same behaviour: each slot
    is independent, and replay ops name slots by number only when their target is still used)."""
    used = sorted({s.client for s in case.steps})
    if used == list(range(len(case.transports))):
        return case
    if any(op.kind == "replay" for s in case.steps for op in s.ops):
        return case  # replays refer to slot numbers: keep them as they are
    index = {old: new for new, old in enumerate(used)}
    steps = tuple(replace(s, client=index[s.client]) for s in case.steps)
    return Case(tuple(case.transports[i] for i in used), steps)


def describe_failure(lines: Sequence[str], indent: str = "    ") -> str:
    return "\n".join(indent + line for line in lines)
