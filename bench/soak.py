"""Resource soak: a day of a busy server's churn against one appliance process, watched from /proc.

What: one ``secureconnect run turn signal`` on loopback goes through

(a) TURN allocation churn: ``--allocations`` allocations (200,000 by default; a busy server's
    day), each created, used, refreshed and ended: one in 20 over TCP, the rest over UDP; half
    use a channel (ChannelBind, then ChannelData), half a permission (CreatePermission, then Send
    indications); each sends two datagrams through a local UDP echo peer and waits for them to
    come back; Refresh with LIFETIME = ``turn.max_lifetime`` (4 s here); then a quarter of the
    UDP ones are left to expire (the client keeps its socket until then, so that no later
    allocation reuses the 5-tuple) and the rest are deleted with Refresh LIFETIME=0 (a quarter of
    the TCP ones end by closing the connection instead, RFC 8656 §3.1). Clients come from 100
    loopback addresses (127.0.2.x) and 2,000 user names, so the default per-address and per-user
    quotas hold; ``turn.total_quota`` is raised because expiring allocations linger. Each source
    address learns one nonce (a 401) and reuses it, as a client may (438 is followed).
(b) Signaling: ``--connections`` WSS connections (20,000) in pairs from 64 loopback addresses
    (127.0.3.x): both join a fresh room, one ``signal`` goes from one to the other, then both
    leave and close (one pair in ten closes without ``leave``: its sessions wait for resume for
    ``signal.resume_grace``, 3 s here).

The load generators are in ``bench/soak_load.py``; this module runs them in rounds and measures.
Each phase runs in ten rounds; after each round the script waits (bounded) until /metrics says
nothing is left (no allocation; no connection or session) and records the process's descriptors
(``/proc/PID/fd``) and resident memory (``VmRSS``). A sampler thread records the peaks every 0.2
s. At the end, after a bounded settle, the figures at start, at the peak and after are compared.

Why: the unit and attack tests prove each path frees what it takes once; a leak of a few hundred
bytes per allocation or connection shows only after tens of thousands of them. The per-round
figures separate a leak (growth round after round) from the allocator keeping its high-water mark
(a step, then flat).

Verdict (exit status 1 if any fails): at most 0.1% of the cycles failed, the appliance stayed up,
descriptors after == at start, and no phase's RSS grew by more than 1 MiB from its quiet point
after round 7 to the one after round 10 (a leak: 17 bytes per allocation or 170 per connection in
the full run; the first rounds warm the allocator up to its high-water mark, which CPython and
glibc keep rather than give back, so a leak is growth that goes on). Whether RSS came back to its
start is reported too, with the step each phase's first round made, but is not a failure.

Bounded: at most 250,000 allocations and 25,000 connections, every wait has a timeout, and the
whole run a deadline (10 min with ``--quick``, 40 min otherwise). Usage (``make soak``)::

    python bench/soak.py --quick    # 10,000 allocations, 1,000 connections: about 1-2 minutes
    python bench/soak.py            # 200,000 allocations, 20,000 connections
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401 - first: it puts tests/support on sys.path
from appliance import Running, free_port, run_appliance
from attacker import SECRET
from common import ROOT, process_cpu, raise_fd_limit, rss_kib
from signal_peers import Appliance
from soak_load import LIFETIME, Churn, EchoPeer, SoakError, signal_round

MIB = 1024
MAX_ALLOCATIONS, MAX_CONNECTIONS = 250_000, 25_000
ROUNDS = 10
DEFAULT_LIFETIME = 2  # turn.default_lifetime; turn.max_lifetime is LIFETIME (4 s)
RESUME_GRACE = 3.0
SAMPLE = 0.2  # seconds between /proc samples
SETTLE = 30.0  # seconds the end may take to come back to quiet
FAIL_RATIO = 0.001
LEAK, LEAK_ROUNDS = 1024, 3  # KiB of RSS growth over a phase's last 3 rounds: a leak


# -- the process under watch -----------------------------------------------------------------------


@dataclass
class Watch:
    """Samples the appliance's descriptors and RSS every SAMPLE seconds in a thread."""

    pid: int
    peak_fds: int = 0
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> tuple[int, int]:
        """(descriptors, RSS KiB) now; raises SoakError if the process is gone."""
        try:
            fds, rss = len(os.listdir(f"/proc/{self.pid}/fd")), rss_kib(self.pid)
        except (OSError, RuntimeError) as exc:
            raise SoakError(f"the appliance is gone: {exc}") from exc
        self.peak_fds, self.peak_rss = max(self.peak_fds, fds), max(self.peak_rss, rss)
        return fds, rss

    @contextmanager
    def running(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(SAMPLE):
                try:
                    self.sample()
                except SoakError:
                    return

        thread = threading.Thread(target=loop, name="soak-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=5)


QUIET = ("turn_allocations", "turn_reservations", "signal_connections", "signal_sessions")


def wait_quiet(app: Appliance, timeout: float) -> float:
    """Poll /metrics until no allocation, reservation, connection or session is left; the
    seconds it took (SoakError after ``timeout``)."""
    started = time.monotonic()
    while True:
        left = {key: value for key, value in app.metrics().items() if key in QUIET and value}
        if not left:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SoakError(f"not quiet after {timeout:.0f} s: {left}")
        time.sleep(0.2)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's figures: per round (done, seconds, fds and RSS KiB once quiet), outcomes."""

    name: str
    unit: str
    rounds: list[tuple[int, float, int, int]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    before: tuple[int, int] = (0, 0)  # (fds, RSS KiB) when the phase started
    peak: tuple[int, int] = (0, 0)
    cpu: float = 0.0  # the appliance's CPU seconds during the rounds' load

    @property
    def done(self) -> int:
        return sum(r[0] for r in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(r[1] for r in self.rounds)

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.outcomes.items() if k.startswith("failed"))

    @property
    def growth(self) -> int:
        """KiB of RSS over the last LEAK_ROUNDS rounds, from quiet point to quiet point."""
        return self.rounds[-1][3] - self.rounds[-1 - LEAK_ROUNDS][3]


@dataclass
class Result:
    """What a run measured: (descriptors, RSS KiB) at start and after, and each phase."""

    start: tuple[int, int]
    after: tuple[int, int] = (0, 0)
    settle: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def peak(self) -> tuple[int, int]:
        peaks = [self.start, *(phase.peak for phase in self.phases)]
        return max(p[0] for p in peaks), max(p[1] for p in peaks)

    def verdicts(self) -> list[tuple[str, bool]]:
        """(what was checked, whether it held); see the module docstring."""
        fds0, fds1 = self.start[0], self.after[0]
        checks = [("the appliance stayed up, no traceback logged", not self.problems)]
        for phase in self.phases:
            limit = FAIL_RATIO * max(phase.done, 1)
            checks.append((f"{phase.unit}: {phase.failed:,} failed", phase.failed <= limit))
        checks.append((f"descriptors after ({fds1}) == at start ({fds0})", fds1 == fds0))
        for phase in self.phases:
            last = sum(r[0] for r in phase.rounds[-LEAK_ROUNDS:])
            checks.append(
                (
                    f"{phase.unit}: RSS when quiet moved {phase.growth / MIB:+.1f} MiB over the "
                    f"last {last:,} (a leak: more than {LEAK / MIB:.0f} MiB)",
                    phase.growth <= LEAK,
                )
            )
        return checks

    def note(self) -> str:
        """Whether RSS came back to its start, and where the difference came from."""
        rss0, rss1 = self.start[1], self.after[1]
        back = rss1 <= rss0 + max(4 * MIB, rss0 // 10)
        steps = ", ".join(
            f"{phase.unit} {(phase.rounds[0][3] - phase.before[1]) / MIB:+.1f} MiB"
            for phase in self.phases
        )
        verdict = "back to start (within max(4 MiB, 10%))" if back else "**not back to start**"
        return (
            f"RSS after - start: {(rss1 - rss0) / MIB:+.1f} MiB, {verdict}. The first round of "
            f"each phase moved it from the phase's start to its first quiet point by: {steps}."
        )


Round = Callable[[int, int], tuple[int, float, Counter[str]]]


def phase(
    name: str, unit: str, total: int, one_round: Round
) -> Callable[[Appliance, Watch, float], Phase]:
    """A phase of ROUNDS rounds of ``one_round(first, count)`` -> (units done, seconds of load,
    outcomes), each followed by a bounded wait for quiet and a sample of the appliance."""

    def run_phase(app: Appliance, watch: Watch, deadline: float) -> Phase:
        figures = Phase(name, unit, before=watch.sample())
        watch.peak_fds, watch.peak_rss = figures.before
        for first, count in rounds(total):
            cpu = process_cpu(watch.pid)
            done, seconds, outcomes = one_round(first, count)
            figures.cpu += process_cpu(watch.pid) - cpu  # (with the wait for expiry: ~idle)
            figures.outcomes.update(outcomes)
            wait_quiet(app, LIFETIME + RESUME_GRACE + 10)
            time.sleep(0.5)
            figures.rounds.append((done, seconds, *watch.sample()))
            print(
                f"  {unit} round {len(figures.rounds)}/{ROUNDS}: {done:,} in {seconds:.1f} s "
                f"({done / seconds:,.0f}/s); quiet: {figures.rounds[-1][2]} fds, RSS "
                f"{figures.rounds[-1][3] / MIB:.1f} MiB",
                flush=True,
            )
            if time.monotonic() > deadline:
                raise SoakError("the run's deadline passed")
        figures.peak = watch.peak_fds, watch.peak_rss
        return figures

    return run_phase


def churn_round(app: Appliance, peer: EchoPeer) -> Round:
    """Allocation cycles; the clients of the expiring ones close once the server is quiet."""

    def one_round(first: int, count: int) -> tuple[int, float, Counter[str]]:
        churn = Churn(app.turn_port, peer.address, first, count)
        try:
            seconds = churn.run()
            wait_quiet(app, LIFETIME + 10)
        finally:
            churn.close_lingering(everything=True)
        failed = sum(v for k, v in churn.outcomes.items() if k.startswith("failed"))
        return count - failed, seconds, churn.outcomes

    return one_round


def connections_round(app: Appliance) -> Round:
    """Signaling pairs: two connections each."""

    def one_round(first: int, count: int) -> tuple[int, float, Counter[str]]:
        started = time.monotonic()
        outcomes = asyncio.run(signal_round(app, first // 2, count // 2))
        return outcomes["connections"], time.monotonic() - started, outcomes

    return one_round


def rounds(total: int) -> list[tuple[int, int]]:
    """(first, count) of each of the ROUNDS rounds of ``total``."""
    cuts = [n * total // ROUNDS for n in range(ROUNDS + 1)]
    return [(cuts[n], cuts[n + 1] - cuts[n]) for n in range(ROUNDS)]


SETTINGS = (
    f'turn.secrets=["{SECRET}"]',
    f"turn.default_lifetime={DEFAULT_LIFETIME}",
    f"turn.max_lifetime={LIFETIME}",
    "turn.total_quota=20000",
    f"signal.resume_grace={RESUME_GRACE}",
    "general.drain_timeout=1",
    'general.log_level="warning"',
)


@contextmanager
def soak_appliance(workdir: Path) -> Iterator[tuple[Appliance, Running]]:
    """``secureconnect run turn signal`` with SETTINGS on free loopback ports."""
    turn_port, signal_port = free_port(), free_port(socket.SOCK_STREAM)
    ports = (f"turn.port={turn_port}", f"turn.tls_port={free_port(socket.SOCK_STREAM)}")
    with run_appliance(
        workdir,
        "turn",
        "signal",
        state_dir=workdir / "state",
        settings=(*SETTINGS, *ports, f"signal.port={signal_port}"),
        log_file=workdir / "stderr.log",
        ready_timeout=30,
        stop_timeout=15,
    ) as running:
        yield Appliance(signal_port, turn_port, workdir / "state", tls=True), running


def run(allocations: int, connections: int, budget: float) -> Result:
    """Start the appliance, run both phases, settle, measure."""
    deadline = time.monotonic() + budget
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, soak_appliance(Path(tmp)) as (app, p):
        watch = Watch(p.proc.pid)
        app.metrics()  # the HTTPS /metrics path warmed up before the start figure
        time.sleep(1.0)
        result = Result(watch.sample())
        peer = EchoPeer()
        phases = (
            phase("TURN allocation churn", "allocations", allocations, churn_round(app, peer)),
            phase(
                "WSS signaling connections",
                "connections",
                connections // 2 * 2,
                (connections_round(app)),
            ),
        )
        try:
            with watch.running():
                for run_phase in phases:
                    result.phases.append(run_phase(app, watch, deadline))
                result.settle = 2.0 + wait_quiet(app, SETTLE)
                time.sleep(2.0)
                result.after = watch.sample()
        except SoakError as exc:
            result.problems.append(str(exc))
        finally:
            peer.close()
        if p.proc.poll() is not None:
            result.problems.append(f"the appliance exited with {p.proc.returncode}")
        result.problems += [line for line in p.log_text().splitlines() if "Traceback" in line]
    return result


# -- the report ------------------------------------------------------------------------------------


def report(result: Result, command: str, seconds: float) -> str:
    (fds0, rss0), (fdsp, rssp), (fds1, rss1) = result.start, result.peak, result.after
    lines = [
        "# Resource soak",
        "",
        f"Command: `{command}`, {seconds:.0f} s in all. Machine: {os.cpu_count()} CPUs, "
        f"{platform.platform()}, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.2f} at the end. One `secureconnect run turn signal` on loopback; "
        f"settings beyond the defaults: `{'`, `'.join(SETTINGS[1:])}`. How and why: the "
        "docstring of `bench/soak.py`.",
        "",
        "| appliance process | descriptors | RSS MiB |",
        "|---|---:|---:|",
        f"| start (idle, before any load) | {fds0} | {rss0 / MIB:.1f} |",
        f"| peak (sampled every {SAMPLE} s) | {fdsp} | {rssp / MIB:.1f} |",
        f"| after (quiet, {result.settle:.1f} s settle) | {fds1} | {rss1 / MIB:.1f} |",
        f"| after - start | {fds1 - fds0:+d} | {(rss1 - rss0) / MIB:+.1f} |",
        "",
    ]
    for figures in result.phases:
        rate = figures.done / figures.seconds if figures.seconds else 0.0
        per = 1000 * figures.cpu / max(figures.done, 1)
        lines += [
            f"## {figures.name}",
            "",
            f"{figures.done:,} {figures.unit} in {figures.seconds:.1f} s of load: **{rate:,.0f} "
            f"{figures.unit}/s**; the appliance used {figures.cpu:.1f} CPU s ({per:.2f} ms per "
            f"{figures.unit[:-1]}). Phase start: {figures.before[0]} descriptors, "
            f"{figures.before[1] / MIB:.1f} MiB; peak: {figures.peak[0]} descriptors, "
            f"{figures.peak[1] / MIB:.1f} MiB.",
            "",
            "| round | done | s | per s | fds when quiet | RSS MiB when quiet |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for n, (done, secs, fds, rss) in enumerate(figures.rounds, 1):
            lines.append(
                f"| {n} | {done:,} | {secs:.1f} | {done / secs:,.0f} | {fds} | {rss / MIB:.1f} |"
            )
        outcomes = ", ".join(f"{k}: {v:,}" for k, v in sorted(figures.outcomes.items()))
        lines += ["", f"Outcomes: {outcomes}.", ""]
    lines += ["## Verdict", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what}" for what, ok in result.verdicts()]
    lines += [f"- problem: {problem}" for problem in result.problems]
    return "\n".join([*lines, "", result.note()]) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 allocations, 1,000 WSS")
    parser.add_argument("--allocations", type=int, help="TURN allocations (default 200,000)")
    parser.add_argument("--connections", type=int, help="WSS connections (default 20,000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak-latest.md")
    args = parser.parse_args()
    allocations = args.allocations or (10_000 if args.quick else 200_000)
    connections = args.connections or (1_000 if args.quick else 20_000)
    allocations = max(2 * ROUNDS, min(allocations, MAX_ALLOCATIONS))
    connections = max(4 * ROUNDS, min(connections, MAX_CONNECTIONS))
    raise_fd_limit(16384)  # the appliance inherits it: lingering allocations hold sockets
    started = time.monotonic()
    result = run(allocations, connections, 600.0 if args.quick else 2400.0)
    command = " ".join(["python bench/soak.py", *sys.argv[1:]])
    text = report(result, command, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if all(ok for _, ok in result.verdicts()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
