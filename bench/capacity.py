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
"""

from __future__ import annotations

from typing import Any

from collect import Bench, Row
from common import server_for, wait_udp_ready
from servers import udp_echo_peer

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


def search(b: Bench, name: str, flows: int, procs: int) -> dict[str, Any]:
    """One server, one load: the rising-then-bisecting search, on one fresh server."""
    steps: list[dict[str, Any]] = []
    with udp_echo_peer() as peer_port, server_for(name, b.workdir(f"cap-{name}-{flows}")) as target:
        wait_udp_ready(target)

        def offer(rate: float) -> dict[str, Any]:
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
            steps.append(step)
            b.log(
                f"capacity {name:<13} {flows} flow(s) {rate:>8.0f} rt/s: loss "
                f"{step['loss_pct']:.3f}%, relayed {step['relayed_per_s']:.0f}/s, sent "
                f"{step['sent_share']:.3f} of offered, workers {step['worker_cores']}"
            )
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


def capacity_section(b: Bench) -> None:
    """Both servers, each load; one row per load with the ratio of the best clean rates."""
    b.raw["capacity"] = {}
    for index, (flows, procs) in enumerate(LOADS):
        results = {name: search(b, name, flows, procs) for name in b.order(index)}
        b.raw["capacity"][f"{flows}-flows"] = results
        best = {name: results[name]["best"] for name in results}
        notes = []
        for name, step in best.items():
            if step is None:
                notes.append(f"{name}: loss >= {LOSS_CAPACITY}% already at {START_RATE:.0f} rt/s")
            elif generator_bound(step):
                notes.append(f"{name}: generator-bound (the server's ceiling is higher)")
            elif step["rate"] >= START_RATE * GROWTH ** (MAX_STEPS - 1) * 0.999:
                notes.append(f"{name}: clean at the search's highest rate (capacity is higher)")
        cores = {n: max(s["worker_cores"]) for n, s in best.items() if s is not None}
        notes.append(
            "generator worker cores at the best step: "
            + ", ".join(f"{n} {c:.2f}" for n, c in cores.items())
        )
        b.rows.append(
            Row(
                "Capacity",
                f"relayed datagrams/s at the highest offered rate with loss < {LOSS_CAPACITY}% "
                f"(200 B channels, {flows} flow{'s' if flows > 1 else ''}, blast.py x{procs})",
                best["secureconnect"]["relayed_per_s"] if best["secureconnect"] else None,
                best["coturn"]["relayed_per_s"] if best["coturn"] else None,
                "dgram/s",
                "; ".join(notes),
            )
        )
