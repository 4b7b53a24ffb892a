"""Relay capacity: the highest offered rate at which loss stays under 0.1%, for both servers.

``turnutils_uclient`` saturates first (it waits for its echoes, using 0.16-0.20 of a core at
its ceiling), so this search uses our own paced generator, ``blast.py``, in separate processes:
it offers a fixed rate of 200-byte ChannelData round trips through a channel to one
``turnutils_peer`` and counts the echoes.

For each server and each load (one flow, and several flows over two generator processes) the
search offers a rising rate (x1.5 per step, 3 s each) on one fresh server until loss reaches
0.1%, then bisects twice between the last clean and the first lossy rate. A step counts as
generator-bound when the generator sent less than 98% of what it was asked to or a worker used
a whole core: then the figure is the generator's, and the row says so. The servers alternate
which goes first per load. Every loop is bounded (steps, rates, durations).

Ours runs with one worker and with two (``turn.workers``, docs/workers.md; each flow comes from
a loopback address of its own, so two workers share the flows), coturn with its defaults (a
relay thread per CPU). Afterwards: the round trip at 80% of our one-flow capacity, against
coturn at the same rate. The ``capacity-best`` section runs coturn 4.17's fastest UDP mode
(udp-gso with multiplex-peer) against ours with two workers.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from collect import Bench, Row
from common import server_for, wait_udp_ready
from servers import TurnTarget, coturn_binary, coturn_version, udp_echo_peer

LOSS_CAPACITY = 0.1  # percent: the loss ceiling that defines capacity
START_RATE = 5_000.0  # round trips per second offered at the first step
GROWTH = 1.5
#: 5k * 1.5**11 = 433k round trips/s. The compiled fast path (issue #14) relayed the old
#: ceiling, 128k round trips/s (9 steps), without loss: a search that ends on its last step
#: says so in the row's note, since the server's capacity is then higher still.
MAX_STEPS = 12
BISECTIONS = 2
STEP_SECONDS = 3.0
SENT_SHARE = 0.98  # below this share of the offered rate, the generator was the limit
WORKER_BOUND = 0.9  # cores: a generator worker this busy was (probably) the limit
LOADS = ((1, 1), (8, 2), (64, 2))  # (flows, generator processes)


def clean(step: dict[str, Any]) -> bool:
    return bool(step["loss_pct"] < LOSS_CAPACITY)


def generator_bound(step: dict[str, Any]) -> bool:
    busy = max(step["worker_cores"]) >= WORKER_BOUND
    return bool(step["sent_share"] < SENT_SHARE or busy)


@dataclass(frozen=True)
class Contender:
    """One server setup in the capacity search: ``name`` for the launcher (``server_for``),
    our ``workers``, coturn's extra config lines."""

    label: str
    name: str
    workers: int = 1
    coturn_extra: tuple[str, ...] = ()
    #: an echo peer of its own for every flow, fresh for every step: coturn's multiplex-peer
    #: mode tells allocations apart by peer address on its one relay socket per thread, so it
    #: refuses (400) a ChannelBind to a peer another allocation uses, even one just deleted
    peer_per_flow: bool = False


COTURN = Contender("coturn", "coturn")
OURS = {n: Contender(f"ours, {n} worker{'s' if n > 1 else ''}", "secureconnect", n) for n in (1, 2)}
#: coturn 4.17's fastest UDP relay: sendmmsg batches and UDP GSO, which need its non-standard
#: multiplex-peer mode (one relay socket per thread); 4.17 receives with recvmmsg by default
COTURN_BEST = Contender(
    "coturn udp-gso multiplex-peer", "coturn", 1, ("udp-gso", "multiplex-peer"), peer_per_flow=True
)


def offer_step(
    b: Bench, label: str, target: TurnTarget, peer_port: str, *, flows: int, procs: int, rate: float
) -> dict[str, Any]:
    """One blast.py run at ``rate`` round trips/s; its JSON result, logged."""
    step = b.generator(
        "capacity",
        [
            "blast.py",
            f"--port={target.port}",
            f"--secret={target.secret}",
            f"--peer-port={peer_port}",
            f"--rate={rate:.0f}",
            f"--duration={STEP_SECONDS}",
            f"--flows={flows}",
            f"--procs={procs}",
        ],
        timeout=STEP_SECONDS + 60,
    )
    b.log(
        f"capacity {label:<30} {flows} flow(s) {rate:>8.0f} rt/s: loss "
        f"{step['loss_pct']:.3f}%, relayed {step['relayed_per_s']:.0f}/s, sent "
        f"{step['sent_share']:.3f} of offered, rtt p99 {step['rtt_p99_ms']:.3f} ms, "
        f"workers {step['worker_cores']}"
    )
    return step


def failed_step(rate: float, error: str) -> dict[str, Any]:
    """A step whose generator failed: counted as lossy, with the error kept."""
    return {
        "rate": rate,
        "loss_pct": 100.0,
        "relayed_per_s": 0.0,
        "sent_share": 0.0,
        "worker_cores": [0.0],
        "rtt_p50_ms": 0.0,
        "rtt_p99_ms": 0.0,
        "error": error[-400:],
    }


def search(b: Bench, who: Contender, flows: int, procs: int) -> dict[str, Any]:
    """One server, one load: the rising-then-bisecting search, on one fresh server."""
    steps: list[dict[str, Any]] = []
    workdir = b.workdir(f"cap-{who.name}-{who.workers}-{len(who.coturn_extra)}-{flows}")
    with (
        udp_echo_peer() as peer_port,
        server_for(who.name, workdir, who.coturn_extra, who.workers) as target,
    ):
        wait_udp_ready(target)

        def offer(rate: float) -> dict[str, Any]:
            with ExitStack() as peers:
                ports = str(peer_port)
                if who.peer_per_flow:  # fresh ones per step, one per flow
                    ports = ",".join(
                        str(peers.enter_context(udp_echo_peer())) for _ in range(flows)
                    )
                try:
                    step = offer_step(
                        b, who.label, target, ports, flows=flows, procs=procs, rate=rate
                    )
                except RuntimeError as exc:  # a generator that failed: this step is not clean
                    b.log(f"capacity {who.label}: the step at {rate:.0f} rt/s failed: {exc}")
                    step = failed_step(rate, str(exc))
            steps.append(step)
            return step

        good: dict[str, Any] | None = None
        bad_rate: float | None = None
        rate = START_RATE
        for _ in range(MAX_STEPS):
            step = offer(rate)
            if not clean(step):
                bad_rate = rate
                break
            good = step
            if generator_bound(step):
                break  # more would measure the generator
            rate *= GROWTH
        if bad_rate is not None and good is not None:
            low, high = good["rate"], bad_rate
            for _ in range(BISECTIONS):
                mid = (low + high) / 2
                step = offer(mid)
                if clean(step):
                    good, low = step, mid
                else:
                    high = mid
    return {"flows": flows, "procs": procs, "steps": steps, "best": good}


def notes_for(best: dict[str, dict[str, Any] | None]) -> list[str]:
    """What limited each search: a generator, the search's top rate, loss from the start."""
    notes = []
    for label, step in best.items():
        if step is None:
            notes.append(f"{label}: loss >= {LOSS_CAPACITY}% already at {START_RATE:.0f} rt/s")
        elif generator_bound(step):
            notes.append(f"{label}: generator-bound (the server's ceiling is higher)")
        elif step["rate"] >= START_RATE * GROWTH ** (MAX_STEPS - 1) * 0.999:
            notes.append(f"{label}: clean at the search's highest rate (capacity is higher)")
    cores = {n: max(s["worker_cores"]) for n, s in best.items() if s is not None}
    notes.append(
        "generator worker cores at the best step: "
        + ", ".join(f"{n} {c:.2f}" for n, c in cores.items())
    )
    return notes


def relayed(step: dict[str, Any] | None) -> float | None:
    return step["relayed_per_s"] if step else None


def capacity_section(b: Bench) -> None:
    """Per load: coturn, ours with one worker and with two; a row for each of ours against
    coturn. Then the round trip at 80% of our one-flow capacity."""
    b.raw["capacity"] = {}
    contenders = (COTURN, OURS[1], OURS[2])
    for index, (flows, procs) in enumerate(LOADS):
        order = contenders if index % 2 == 0 else contenders[::-1]
        results = {who.label: search(b, who, flows, procs) for who in order}
        b.raw["capacity"][f"{flows}-flows"] = results
        best = {label: results[label]["best"] for label in results}
        notes = "; ".join(notes_for(best))
        for workers in (1, 2):
            b.rows.append(
                Row(
                    "Capacity",
                    f"relayed datagrams/s, loss < {LOSS_CAPACITY}% (200 B channels, {flows} "
                    f"flow{'s' if flows > 1 else ''}, blast.py x{procs}; "
                    f"{OURS[workers].label})",
                    relayed(best[OURS[workers].label]),
                    relayed(best[COTURN.label]),
                    "dgram/s",
                    notes,
                )
            )
    one_flow = b.raw["capacity"]["1-flows"][OURS[1].label]["best"]
    if one_flow is not None:
        latency_under_load(b, 0.8 * one_flow["rate"])


def latency_under_load(b: Bench, rate: float) -> None:
    """The round trip at ``rate`` (80% of our one-flow capacity) against coturn and ours."""
    steps: dict[str, dict[str, Any]] = {}
    for who in (COTURN, OURS[1]):
        with (
            udp_echo_peer() as peer_port,
            server_for(who.name, b.workdir(f"lat80-{who.name}")) as target,
        ):
            wait_udp_ready(target)
            steps[who.name] = offer_step(
                b, who.label, target, str(peer_port), flows=1, procs=1, rate=rate
            )
    b.raw["latency_at_80pct"] = steps
    ours, theirs = steps["secureconnect"], steps["coturn"]
    note = (
        f"1 flow at {rate:.0f} rt/s (80% of our capacity), 1 in 32 datagrams timed; loss: "
        f"ours {ours['loss_pct']:.3f}%, coturn {theirs['loss_pct']:.3f}%"
    )
    for q in ("p50", "p99"):
        b.rows.append(
            Row(
                "Latency",
                f"relay round trip {q} at 80% of our capacity",
                ours[f"rtt_{q}_ms"],
                theirs[f"rtt_{q}_ms"],
                "ms",
                note,
            )
        )


def best_mode_section(b: Bench) -> None:
    """coturn 4.17 in its fastest UDP mode against ours with two workers, 1 and 8 flows (the
    ``capacity-best`` section; needs coturn 4.17)."""
    if coturn_version(coturn_binary()) < (4, 17):
        b.log("capacity-best: not run, coturn's udp-gso/multiplex-peer mode needs coturn 4.17")
        b.raw["capacity_best_mode"] = {"not run": "coturn older than 4.17"}
        return
    b.raw["capacity_best_mode"] = {}
    for index, (flows, procs) in enumerate(LOADS[:2]):
        order = (COTURN_BEST, OURS[2]) if index % 2 == 0 else (OURS[2], COTURN_BEST)
        results = {who.label: search(b, who, flows, procs) for who in order}
        b.raw["capacity_best_mode"][f"{flows}-flows"] = results
        best = {label: results[label]["best"] for label in results}
        b.rows.append(
            Row(
                "Capacity",
                f"relayed datagrams/s, loss < {LOSS_CAPACITY}% ({flows} "
                f"flow{'s' if flows > 1 else ''}; ours, 2 workers, against coturn with "
                "udp-gso and multiplex-peer, an echo peer per flow)",
                relayed(best[OURS[2].label]),
                relayed(best[COTURN_BEST.label]),
                "dgram/s",
                "; ".join(notes_for(best)),
            )
        )
