"""TURN relay benchmark: our server against coturn, side by side, reported as ratios.

Each round runs the same ``turnutils_uclient`` load (``-c -z 0 -m FLOWS -n PACKETS -l SIZE``,
plus ``-t`` for TCP clients and ``-s`` for Send/Data indications instead of channels) against a
fresh coturn and a fresh ``secureconnect run turn``, in an order that alternates per round, with
one ``turnutils_peer`` echoing for both. Absolute numbers on a shared 2-core machine are noise;
the per-round ratios ours/coturn are the result (median over rounds).

Per run it measures: uclient's packet counters and loss; the server's CPU seconds
(utime+stime of the whole process from /proc/PID/stat); the window in which the server was busy
relaying (from CPU samples every 50 ms: uclient staggers its flows' starts over 1-6 s and, when
packets are lost, waits 10 s before exiting, so wall time says little); the best one-second rate
from uclient's per-second counters; kernel receive-buffer drops on the server's, the peer's and the
client's UDP sockets (where the loss happened). See bench/README.md for how to read the output.

Everything is on loopback. Every loop is bounded: at most 2,000,000 round trips per run, a
per-run timeout, a bounded number of rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import SERVERS, process_cpu, server_for, wait_udp_ready
from relay_sampling import NCPU, Sampler, find_pid
from servers import TurnTarget, coturn_binary, require_tool, udp_echo_peer

MAX_ROUND_TRIPS = 2_000_000  # per run (flows * packets)
MAX_ROUNDS = 20
MAX_FLOWS = 200
SERVER_BOUND = 0.9  # a server using >= 0.9 core at its peak ...
DROPS_BOUND = 0.01  # ... whose sockets overflowed for >= 1% of the packets is the bottleneck
NOISY = 0.3  # cores of other people's work in the window above which the report warns
TARGET_THROUGHPUT = 0.5  # the target: at least half of coturn's throughput

STATUS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\), total send dropped (\d+)")
TRANSMIT = re.compile(r"Total transmit time is (\d+)")
RTT = re.compile(r"Average round trip delay ([\d.]+) ms")


# -- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One uclient run against one server (times in s, rates in datagrams/s)."""

    server: str
    round: int
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    window_s: float = 0.0
    sent: int = 0
    received: int = 0
    lost: int = 0
    loss_pct: float = 0.0
    send_dropped: int = 0
    transmit_s: int = 0
    rtt_ms: float = 0.0
    relayed: int = 0  # 2 * received round trips
    rate_window: float = 0.0  # relayed / busy window: the throughput
    rate_peak: float = 0.0  # best one-second rate from uclient's counters, as datagrams
    rate_wall: float = 0.0  # relayed / wall time (includes uclient's start stagger and drain)
    handled: int = 0  # datagrams the server received and relayed (lost ones included)
    server_cpu_s: float = 0.0
    cpu_us_per_datagram: float = 0.0  # server CPU / relayed
    cpu_us_per_handled: float = 0.0  # server CPU / handled
    server_util: float = 0.0  # cores used by the server inside the window
    server_peak_util: float = 0.0  # the server's busiest half second, in cores
    client_util: float = 0.0  # cores used by uclient inside the window
    machine_busy: float = 0.0  # cores busy on the whole machine inside the window
    other_load: float = 0.0  # ... of which not by server, uclient or peer: other people's work
    client_cpu_s: float = 0.0
    peer_cpu_s: float = 0.0
    drops_listen: int = 0  # kernel receive-buffer drops on the server's listening UDP socket
    drops_relay: int = 0  # ... on its relay sockets (datagrams from the peer)
    drops_peer: int = 0  # ... on turnutils_peer's socket
    drops_client: int = 0  # ... on uclient's sockets
    bound: str = ""  # which side limited the rate (heuristic, see README)
    status: list[tuple[float, int, int]] = field(default_factory=list)  # (t, sent, received)


@dataclass(frozen=True)
class Load:
    flows: int
    packets: int
    size: int
    transport: str
    send_indications: bool
    timeout: float


def uclient_args(binary: str, load: Load, target: TurnTarget, peer_port: int) -> list[str]:
    args = [binary, "-c", "-z", "0", "-m", str(load.flows), "-n", str(load.packets)]
    args += ["-l", str(load.size), "-e", "127.0.0.1", "-r", str(peer_port)]
    args += ["-W", target.secret, "-u", "bench", "-p", str(target.port)]
    if load.transport == "tcp":
        args.append("-t")
    if load.send_indications:
        args.append("-s")
    return [*args, "127.0.0.1"]


def read_lines(stream: Any, sink: list[tuple[float, str]]) -> None:
    """Timestamp each line uclient prints (it is line-buffered through stdbuf)."""
    for line in stream:
        sink.append((time.monotonic(), line.rstrip("\n")))


def run_uclient(
    tools: dict[str, str], load: Load, target: TurnTarget, peer: tuple[int, int | None], rnd: int
) -> RunResult:
    """One uclient run against ``target``, measured; never raises for a failed run."""
    result = RunResult(server=target.name, round=rnd)
    peer_port, peer_pid = peer
    args = [tools["stdbuf"], "-oL", *uclient_args(tools["uclient"], load, target, peer_port)]
    lines: list[tuple[float, str]] = []
    sampler = Sampler(target.pid, peer_pid, time.monotonic() + load.timeout + 5)
    cpu0 = process_cpu(target.pid)
    peer0 = process_cpu(peer_pid) if peer_pid else 0.0
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.start()
    start = time.monotonic()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv of installed tools
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler.client_pid = proc.pid
    reader = threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=load.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        result.error = f"timed out after {load.timeout:.0f} s"
    result.wall_s = time.monotonic() - start
    reader.join(timeout=5)
    sampler.stop()
    result.server_cpu_s = process_cpu(target.pid) - cpu0
    result.peer_cpu_s = (process_cpu(peer_pid) - peer0) if peer_pid else 0.0
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.client_cpu_s = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    if not result.error and proc.returncode != 0:
        result.error = f"uclient exited with status {proc.returncode}"
    parse_output(result, lines)
    if not result.error and result.sent == 0:
        result.error = "uclient sent nothing"
    if result.error:
        result.error += ": " + " | ".join(line for _, line in lines[-5:])
        return result
    connected = next((t for t, line in lines if "Total connect time" in line), start)
    derive(result, sampler, connected, target.port)
    result.ok = True
    return result


def parse_output(result: RunResult, lines: list[tuple[float, str]]) -> None:
    for t, line in lines:
        if (m := STATUS.search(line)) is not None:
            result.sent, result.received = int(m[1]), int(m[2])
            if "msz=" in line:
                result.status.append((t, result.sent, result.received))
        elif (m := LOST.search(line)) is not None:
            result.lost, result.loss_pct, result.send_dropped = int(m[1]), float(m[2]), int(m[3])
        elif (m := TRANSMIT.search(line)) is not None:
            result.transmit_s = int(m[1])
        elif (m := RTT.search(line)) is not None:
            result.rtt_ms = float(m[1])


def derive(result: RunResult, sampler: Sampler, connected: float, port: int) -> None:
    """Rates, CPU per datagram, drops and the bottleneck guess from the raw measurements."""
    result.relayed = 2 * result.received  # client->peer and peer->client per round trip
    window = sampler.busy_window(connected)
    if window is not None and window.seconds > 0:
        result.window_s = window.seconds
        result.rate_window = result.relayed / window.seconds
        result.server_util = window.server_cpu / window.seconds
        result.client_util = window.client_cpu / window.seconds
        result.machine_busy = window.machine_cores
        ours = window.server_cpu + window.client_cpu + window.peer_cpu
        result.other_load = max(0.0, window.machine_cores - ours / window.seconds)
    if result.wall_s > 0:
        result.rate_wall = result.relayed / result.wall_s
    rates = [
        (r1 - r0) / (t1 - t0)
        for (t0, _, r0), (t1, _, r1) in zip(result.status, result.status[1:], strict=False)
        if t1 - t0 > 0.5
    ]
    result.rate_peak = 2 * max(rates, default=0.0)
    if result.relayed:
        result.cpu_us_per_datagram = result.server_cpu_s / result.relayed * 1e6
    result.drops_listen = sampler.drops("server", port)
    result.drops_relay = sampler.drops("server", port, on_port=False)
    result.drops_peer = sampler.drops("peer")
    result.drops_client = sampler.drops("client")
    # Each datagram that got past the listening socket was relayed to the peer; each echo that
    # got past the peer's and the relay socket's buffers was relayed back to the client.
    forwarded = result.sent - result.drops_listen
    result.handled = 2 * forwarded - result.drops_peer - result.drops_relay
    if result.handled > 0:
        result.cpu_us_per_handled = result.server_cpu_s / result.handled * 1e6
    result.server_peak_util = sampler.peak_server_util()
    result.bound = bottleneck(result)


def bottleneck(result: RunResult) -> str:
    """A one-word guess at what limited the rate (README: "Which side is the bottleneck")."""
    server_drops = result.drops_listen + result.drops_relay
    if result.server_peak_util >= SERVER_BOUND and server_drops >= DROPS_BOUND * result.sent:
        return "server"
    if result.machine_busy >= SERVER_BOUND * NCPU:
        return "machine"
    return "client"


# -- rounds, summary, output ---------------------------------------------------------------


def run_rounds(
    load: Load, rounds: int, tools: dict[str, str], workroot: Path, echo: Callable[[str], None]
) -> list[RunResult]:
    results: list[RunResult] = []
    with udp_echo_peer() as peer_port:
        peer = (peer_port, find_pid("turnutils_peer", str(peer_port)))
        for rnd in range(rounds):
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for name in order:
                workdir = workroot / f"{rnd}-{name}"
                workdir.mkdir()
                try:
                    with server_for(name, workdir) as target:
                        wait_udp_ready(target)
                        result = run_uclient(tools, load, target, peer, rnd)
                except (RuntimeError, OSError) as exc:  # the server did not start, or died
                    result = RunResult(server=name, round=rnd, error=str(exc))
                if not result.ok:
                    result.error += log_tail(workdir)
                results.append(result)
                echo(row(result))
    return results


def log_tail(workdir: Path) -> str:
    for name in ("secureconnect.log", "coturn.log"):
        path = workdir / name
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-5:]
            return f" [{name}: {' | '.join(tail)}]"
    return ""


HEADER = (
    f"{'rnd':>3} {'server':<13} {'wall s':>6} {'busy s':>6} {'recv':>7} {'loss%':>6} "
    f"{'dgram/s':>7} {'peak/s':>7} {'CPU s':>6} {'us/dg':>6} {'us/hd':>6} "
    f"{'srv':>4} {'pk':>4} {'cli':>4} {'mach':>4} {'oth':>4} {'drops l/r/p/c':>21} {'bound':>7}"
)


def row(r: RunResult) -> str:
    if not r.ok:
        return f"{r.round:>3} {r.server:<13} FAILED: {r.error}"
    drops = f"{r.drops_listen}/{r.drops_relay}/{r.drops_peer}/{r.drops_client}"
    return (
        f"{r.round:>3} {r.server:<13} {r.wall_s:6.1f} {r.window_s:6.2f} {r.received:7d} "
        f"{r.loss_pct:6.2f} {r.rate_window:7.0f} {r.rate_peak:7.0f} {r.server_cpu_s:6.2f} "
        f"{r.cpu_us_per_datagram:6.2f} {r.cpu_us_per_handled:6.2f} {r.server_util:4.2f} "
        f"{r.server_peak_util:4.2f} {r.client_util:4.2f} {r.machine_busy:4.2f} "
        f"{r.other_load:4.2f} {drops:>21} "
        f"{r.bound:>7}"
    )


METRICS = (
    "rate_window",
    "rate_peak",
    "rate_wall",
    "cpu_us_per_datagram",
    "cpu_us_per_handled",
    "loss_pct",
    "server_util",
    "server_peak_util",
    "other_load",
    "client_util",
    "window_s",
    "wall_s",
)


RATIOS = {
    "rate_window": "throughput (busy window)",
    "rate_peak": "throughput (best second)",
    "rate_wall": "throughput (wall time)",
    "cpu_us_per_datagram": "server CPU per relayed dgram",
    "cpu_us_per_handled": "server CPU per handled dgram",
}


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Median per server and the median of per-round ratios ours/coturn."""
    by_server: dict[str, dict[str, Any]] = {}
    for name in SERVERS:
        ok = [r for r in results if r.server == name and r.ok]
        if ok:
            medians: dict[str, Any] = {
                m: statistics.median(getattr(r, m) for r in ok) for m in METRICS
            }
            bounds = [r.bound for r in ok]
            medians["bound"] = max(set(bounds), key=bounds.count)  # the most frequent verdict
            medians["runs"] = len(ok)
            by_server[name] = medians
    ratios: dict[str, float] = {}
    for metric in RATIOS:
        per_round = list(paired_ratios(results, metric))
        if per_round:
            ratios[metric] = statistics.median(per_round)
    return {"servers": by_server, "ratios": ratios}


def paired_ratios(results: list[RunResult], metric: str) -> Iterator[float]:
    """ours/coturn for each round in which both runs succeeded."""
    for rnd in sorted({r.round for r in results}):
        pair = {r.server: r for r in results if r.round == rnd and r.ok}
        if "coturn" in pair and "secureconnect" in pair:
            base = getattr(pair["coturn"], metric)
            if base > 0:
                yield getattr(pair["secureconnect"], metric) / base


def report(summary: dict[str, Any]) -> list[str]:
    servers: dict[str, dict[str, Any]] = summary["servers"]
    ratios: dict[str, float] = summary["ratios"]
    lines = ["", "Median over rounds:"]
    for name, s in servers.items():
        lines.append(
            f"  {name:<13} {s['rate_window']:6.0f} dgram/s (busy window), "
            f"{s['rate_peak']:6.0f} (best second), {s['cpu_us_per_datagram']:5.2f} us CPU/relayed "
            f"({s['cpu_us_per_handled']:5.2f}/handled), loss {s['loss_pct']:5.2f}%"
        )
        lines.append(
            f"  {'':<13} server {s['server_util']:.2f} core (peak {s['server_peak_util']:.2f}), "
            f"uclient {s['client_util']:.2f} core -> {s['bound']}-bound"
        )
    if not ratios:
        return [*lines, "", "No round with both servers succeeding: no ratios."]
    lines += ["", "Ratios ours/coturn (median of per-round ratios):"]
    for metric, label in RATIOS.items():
        if metric in ratios:
            lines.append(f"  {label:<30} {ratios[metric]:6.2f}x")
    if "secureconnect" in servers and "coturn" in servers:
        ours, theirs = servers["secureconnect"], servers["coturn"]
        lines.append(
            f"  {'loss':<30} {ours['loss_pct']:.2f}% ours vs {theirs['loss_pct']:.2f}% coturn"
        )
    other = max(s["other_load"] for s in servers.values())
    if other > NOISY:
        lines.append(
            f"  WARNING: other processes kept {other:.2f} of {NCPU} cores busy during the runs "
            "(median): expect noisy ratios, rerun when the machine is quieter"
        )
    if "rate_window" in ratios:
        met = "met" if ratios["rate_window"] >= TARGET_THROUGHPUT else "NOT met"
        lines.append(f"  target >= {TARGET_THROUGHPUT}x coturn throughput: {met}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--flows", type=int, default=10, help="uclient -m (default 10)")
    parser.add_argument("--packets", type=int, default=20000, help="per flow, uclient -n")
    parser.add_argument("--size", type=int, default=200, help="payload bytes, uclient -l")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both servers")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--send-indications", action="store_true", help="uclient -s")
    parser.add_argument("--timeout", type=float, default=120.0, help="per run, seconds")
    parser.add_argument("--json", type=Path, help="write all runs and the summary here")
    args = parser.parse_args(argv)
    if not 1 <= args.flows <= MAX_FLOWS:
        parser.error(f"--flows must be 1..{MAX_FLOWS}")
    if args.packets < 1 or args.flows * args.packets > MAX_ROUND_TRIPS:
        parser.error(f"--flows * --packets must be 1..{MAX_ROUND_TRIPS:,} per run")
    if not 16 <= args.size <= 1400:
        parser.error("--size must be 16..1400")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if not 10 <= args.timeout <= 600:
        parser.error("--timeout must be 10..600 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    stdbuf = shutil.which("stdbuf")
    if stdbuf is None:
        print("stdbuf (coreutils) is required to timestamp uclient's output", file=sys.stderr)
        return 2
    tools = {"uclient": require_tool("turnutils_uclient"), "stdbuf": stdbuf}
    coturn_binary()  # fails early with a clear message when there is none
    load = Load(
        args.flows, args.packets, args.size, args.transport, args.send_indications, args.timeout
    )
    method = "Send/Data indications" if load.send_indications else "channels"
    mode = f"{load.transport.upper()} {method}"
    loadavg = os.getloadavg()[0]
    print(
        f"turn relay bench: {load.flows} flows x {load.packets} packets x {load.size} B, {mode}, "
        f"{args.rounds} rounds, {NCPU} CPUs (load average {loadavg:.2f}), "
        f"timeout {load.timeout:.0f} s per run"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="turn-bench-") as tmp:
        results = run_rounds(load, args.rounds, tools, Path(tmp), lambda s: print(s, flush=True))
    summary = summarize(results)
    for line in report(summary):
        print(line)
    total = time.monotonic() - began
    print(f"\nTotal runtime {total:.1f} s")
    if args.json:
        document = {
            "config": {**asdict(load), "rounds": args.rounds, "cpus": NCPU, "loadavg": loadavg},
            "runs": [asdict(r) for r in results],
            "summary": summary,
            "total_s": total,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
