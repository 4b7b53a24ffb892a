"""The whole benchmark in one command: our server against coturn, written to bench/results/.

Starts coturn and ``secureconnect run turn`` with equivalent configurations on loopback (the
launchers of ``tests/support/servers.py``: REST secret, loopback peers allowed, no quotas, wide
relay port ranges), runs the same loads against each, alternating which server goes first, and
writes ``bench/results/latest.md`` (one table, every figure as ours/coturn where coturn has one)
and ``bench/results/latest.json`` (the raw measurements, the machine, the versions, the exact
commands). Sections, each one bounded in count and time:

- **stun**: Binding requests answered per second at saturation and per server CPU second, with
  our own closed-loop generator (``stun_load.py``) in its own process.
- **alloc**: allocations per second, server CPU and RSS per live allocation at 1,000 and 5,000
  live allocations (``alloc_load.py``, its own process).
- **relay**: server CPU seconds per million relayed datagrams and loss, ``turnutils_uclient``
  via ``turn_relay.py``'s machinery: 100 B and 1000 B, channels and Send indications, 1 and 10
  clients.
- **latency**: relay round trip p50/p99 at a fixed moderate rate through a channel to a UDP echo
  peer (``turn_client.relay_latency``).
- **signal** (ours only): memory per idle WSS connection and routed-message latency
  (``signal_measure.py``).
- **capacity**: the highest offered rate with loss under 0.1%, 1, 8 and 64 flows, ours with one
  and two workers, with our own paced generator (``capacity.py`` and ``blast.py``: uclient
  saturates first); then the round trip at 80% of our one-flow capacity.
- **capacity-best** (coturn 4.17 only): coturn's fastest UDP mode (udp-gso, multiplex-peer)
  against ours with two workers.

Absolute numbers on a shared 2-core machine are noise; ratios from the same run are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import signal_measure
import turn_relay
from capacity import best_mode_section, capacity_section
from collect import BENCH, Bench, Row
from common import (
    SERVERS,
    percentiles,
    raise_fd_limit,
    server_for,
    wait_udp_ready,
)
from servers import COTURN_ENV, TurnTarget, coturn_binary, require_tool, udp_echo_peer
from turn_client import relay_latency

RESULTS = BENCH / "results"
# Equivalent relay port ranges: our default is 49152-65535; servers.py gives coturn 9,000 ports.
COTURN_WIDE_PORTS = ("min-port=49152", "max-port=65535")
GENERATOR_BOUND = 0.9  # a generator using >= 0.9 core was (probably) the limit


# -- sections -------------------------------------------------------------------------------


def stun_section(b: Bench, duration: float, rounds: int) -> None:
    """Binding requests answered per second and per server CPU second, alternating rounds."""
    runs: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for name in b.order(rnd):
            with server_for(name, b.workdir(f"stun-{name}")) as target:
                wait_udp_ready(target)
                args = ["stun_load.py", "--port", str(target.port), "--pid", str(target.pid)]
                args += ["--duration", str(duration)]
                r = b.generator("stun", args, timeout=duration + 30)
            r.update(server=name, round=rnd)
            r["answered_per_s"] = r["received"] / r["seconds"]
            r["per_cpu_s"] = r["received"] / r["server_cpu_s"] if r["server_cpu_s"] else 0.0
            lost = r["sent"] - r["received"] - r["in_flight"]
            r["loss_pct"] = 100.0 * max(0, lost) / r["sent"] if r["sent"] else 0.0
            r["server_cores"] = r["server_cpu_s"] / r["seconds"]
            r["generator_cores"] = r["generator_cpu_s"] / r["seconds"]
            runs.append(r)
            b.log(
                f"stun {name:<13} round {rnd}: {r['answered_per_s']:8.0f} answered/s, "
                f"{r['per_cpu_s']:8.0f} per server CPU s, server {r['server_cores']:.2f} core, "
                f"generator {r['generator_cores']:.2f} core"
            )
    b.raw["stun"] = runs
    gen = {n: median_of(runs, "generator_cores", n) for n in SERVERS}
    bound = f"generator cores: ours {gen['secureconnect']:.2f}, coturn {gen['coturn']:.2f}"
    limited = [n for n in SERVERS if gen[n] >= GENERATOR_BOUND]
    if limited:
        bound += f"; generator saturated (>= {GENERATOR_BOUND} core) against {', '.join(limited)}"
    for metric, label, unit, note in (
        ("per_cpu_s", "Binding answered per server CPU second", "1/CPU s", ""),
        ("answered_per_s", "Binding answered per second at saturation", "1/s", bound),
        ("server_cores", "server cores used at saturation", "cores", ""),
        ("loss_pct", "requests lost at saturation (in flight at the end excluded)", "%", ""),
    ):
        b.rows.append(paired_row(runs, "STUN", metric, label=label, unit=unit, note=note))


def alloc_section(b: Bench, stages: list[int], timeout: float) -> None:
    """Allocations per second and RSS per live allocation; coturn gets our port range."""
    results: dict[str, dict[str, Any]] = {}
    for name in b.order(0):
        extra = COTURN_WIDE_PORTS if name == "coturn" else ()
        with server_for(name, b.workdir(f"alloc-{name}"), extra) as target:
            wait_udp_ready(target)
            args = ["alloc_load.py", "--port", str(target.port), "--pid", str(target.pid)]
            args += ["--secret", target.secret, "--stages", ",".join(map(str, stages))]
            args += ["--timeout", str(timeout)]
            results[name] = b.generator("alloc", args, timeout=len(stages) * (timeout + 10))
        for stage in results[name]["stages"]:
            b.log(
                f"alloc {name:<13} {stage['live']:5d} live: {stage['per_second']:7.0f}/s, "
                f"{stage['kib_per_allocation']:6.2f} KiB each, failed {stage['failed']}"
            )
    b.raw["alloc"] = results
    for i, target_count in enumerate(stages):
        per = {name: results[name]["stages"][i] for name in SERVERS}
        failed = {name: per[name]["failed"] for name in SERVERS}
        note = (
            ""
            if not any(failed.values())
            else f"failed: ours {failed['secureconnect']}, " + (f"coturn {failed['coturn']}")
        )
        label = f"{target_count:,} live" if i == 0 else f"{stages[i - 1]:,} -> {target_count:,}"
        for key, metric, unit in (
            ("per_second", f"allocations per second ({label})", "1/s"),
            ("cpu_ms", f"server CPU per allocation ({label})", "ms"),
        ):
            values = {n: stage_value(per[n], key) for n in SERVERS}
            b.rows.append(
                Row("Allocations", metric, values["secureconnect"], values["coturn"], unit, note)
            )
        b.rows.append(
            Row(
                "Allocations",
                f"RSS per live allocation at {target_count:,} (over the idle server)",
                per["secureconnect"]["kib_per_allocation"],
                per["coturn"]["kib_per_allocation"],
                "KiB",
                note,
            )
        )
    base = {n: results[n]["baseline_rss_kib"] / 1024 for n in SERVERS}
    b.rows.append(
        Row("Allocations", "RSS of the idle server", base["secureconnect"], base["coturn"], "MiB")
    )


def stage_value(stage: dict[str, Any], key: str) -> float:
    """A figure of one allocation stage; ``cpu_ms`` is derived (server CPU / allocations made)."""
    if key == "cpu_ms":
        return 1000.0 * stage["server_cpu_s"] / stage["made"] if stage["made"] else 0.0
    return float(stage[key])


RELAY_LOADS = (  # (flows, packets per flow): 30,000 round trips per run either way
    (1, 30_000),
    (10, 3_000),
)


def relay_section(b: Bench, sizes: list[int], loads: tuple[tuple[int, int], ...]) -> None:
    """Server CPU per relayed datagram and loss, from turn_relay.py's uclient runs."""
    stdbuf = shutil.which("stdbuf")
    if stdbuf is None:
        raise RuntimeError("stdbuf (coreutils) is required to timestamp uclient's output")
    tools = {"uclient": require_tool("turnutils_uclient"), "stdbuf": stdbuf}
    b.raw["relay"] = []
    for size in sizes:
        for indications in (False, True):
            for flows, packets in loads:
                load = turn_relay.Load(flows, packets, size, "udp", indications, 90.0)
                method = "Send indications" if indications else "channels"
                label = f"{size} B, {method}, {flows} client{'s' if flows > 1 else ''}"
                b.commands.setdefault("relay", []).append(uclient_template(load))
                root = b.workdir(f"relay-{size}-{flows}-{int(indications)}")
                results = turn_relay.run_rounds(load, b.rounds, tools, root, b.log)
                summary = turn_relay.summarize(results)
                b.raw["relay"].append(
                    {"load": asdict(load), "runs": [asdict(r) for r in results], **summary}
                )
                servers = summary["servers"]
                if len(servers) < 2:
                    b.failures.append(f"relay {label}: a server failed, see latest.json")
                ours, theirs = servers.get("secureconnect", {}), servers.get("coturn", {})
                bound = f"bound: ours {ours.get('bound', '-')}, coturn {theirs.get('bound', '-')}"
                other = (ours.get("other_load", 0.0), theirs.get("other_load", 0.0))
                bound += f"; other processes: {other[0]:.2f} / {other[1]:.2f} cores"
                b.rows.append(
                    Row(
                        "Relay cost",
                        f"CPU s per million relayed ({label})",
                        ours.get("cpu_us_per_datagram"),
                        theirs.get("cpu_us_per_datagram"),
                        "s/M",
                        bound,
                    )
                )
                b.rows.append(
                    Row(
                        "Relay cost",
                        f"loss ({label})",
                        ours.get("loss_pct"),
                        theirs.get("loss_pct"),
                        "%",
                    )
                )


def uclient_template(load: turn_relay.Load) -> str:
    """uclient's command line for ``load`` with the per-run ports and secret as placeholders."""
    shown = TurnTarget("", "127.0.0.1", 0, None, "SECRET", "", 0)
    argv = turn_relay.uclient_args("turnutils_uclient", load, shown, 0)
    text = " ".join(argv).replace("-r 0", "-r PEER_PORT").replace("-p 0", "-p SERVER_PORT")
    return text.replace("SECRET", "interop-secret")


def latency_section(b: Bench, count: int, rate: float) -> None:
    """Relay round trip through a channel to a UDP echo peer, at a fixed moderate rate."""
    b.raw["latency"] = {}
    with udp_echo_peer() as peer_port:
        for name in b.order(1):
            with server_for(name, b.workdir(f"latency-{name}")) as target:
                wait_udp_ready(target)
                rtts = relay_latency(
                    (target.host, target.port),
                    target.secret,
                    ("127.0.0.1", peer_port),
                    count=count,
                    rate=rate,
                )
            stats = percentiles(rtts) if len(rtts) >= 2 else {"p50": 0.0, "p99": 0.0, "n": 0.0}
            stats["lost"] = float(count - len(rtts))
            b.raw["latency"][name] = stats
            b.log(f"latency {name:<13} p50 {stats['p50']:.3f} ms, p99 {stats['p99']:.3f} ms")
    b.commands["latency"] = [
        f"in-process: allocate, ChannelBind 0x4000 to turnutils_peer, {count} x 100 B "
        f"ChannelData at {rate:.0f}/s, RTT per sequence number"
    ]
    lat = b.raw["latency"]
    note = f"{count} datagrams at {rate:.0f}/s; lost: ours {lat['secureconnect']['lost']:.0f}, "
    note += f"coturn {lat['coturn']['lost']:.0f}"
    for q in ("p50", "p99"):
        b.rows.append(
            Row(
                "Latency",
                f"relay round trip {q}",
                lat["secureconnect"][q],
                lat["coturn"][q],
                "ms",
                note,
            )
        )


def signal_section(b: Bench, counts: list[int], trips: int) -> None:
    """Ours only: memory per idle joined WSS connection, routed-message latency."""
    b.raw["signal"] = {}
    b.commands["signal"] = [
        f"in-process: signal_measure.measure(connections=N, room_size=2, round_trips={trips}) "
        "against python -m secureconnect run signal (WSS, self-signed certificate)"
    ]
    raise_fd_limit(2 * max(counts) + 1024)
    for count in counts:
        with (
            tempfile.TemporaryDirectory(dir=b.workroot) as tmp,
            signal_measure.appliance(Path(tmp), tls=True) as server,
        ):
            coro = signal_measure.measure(server, count, 2, trips)
            result = asyncio.run(asyncio.wait_for(coro, signal_measure.RUN_TIMEOUT))
        b.raw["signal"][str(count)] = result
        b.log(f"signal {count} idle WSS: {result['kib_per_connection']} KiB each")
        b.rows.append(
            Row(
                "Signaling",
                f"RSS per idle WSS connection at {count:,}",
                result["kib_per_connection"],
                None,
                "KiB",
                f"opened in {result['open_seconds']} s",
            )
        )
        loaded = result["latency_with_idle_connections"]["round_trip_ms"]
        b.rows.append(
            Row(
                "Signaling",
                f"routed signal round trip p50 / p99 with {count:,} idle",
                loaded["p50"],
                None,
                "ms",
                f"p99 {loaded['p99']:.3f} ms, {trips} round trips A->B->A",
            )
        )
    empty = next(iter(b.raw["signal"].values()))["latency_empty_server"]["round_trip_ms"]
    b.rows.append(
        Row(
            "Signaling",
            "routed signal round trip p50 (empty server)",
            empty["p50"],
            None,
            "ms",
            f"p99 {empty['p99']:.3f} ms",
        )
    )


# -- helpers and output ---------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], key: str, server: str | None = None) -> float:
    values = [float(r[key]) for r in runs if server is None or r["server"] == server]
    return statistics.median(values) if values else 0.0


def paired_row(
    runs: list[dict[str, Any]], section: str, key: str, *, label: str, unit: str, note: str
) -> Row:
    """Medians per server; the note gets the median of per-round ratios when rounds > 1."""
    row = Row(
        section,
        label,
        median_of(runs, key, "secureconnect"),
        median_of(runs, key, "coturn"),
        unit,
        note,
    )
    ratios = []
    for rnd in sorted({r["round"] for r in runs}):
        pair = {r["server"]: float(r[key]) for r in runs if r["round"] == rnd}
        if pair.get("coturn"):
            ratios.append(pair.get("secureconnect", 0.0) / pair["coturn"])
    if len(ratios) > 1:
        paired = f"per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}"
        row.note = f"{note}; {paired}" if note else paired
    return row


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def machine_info() -> dict[str, Any]:
    """Machine and versions for the report."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(  # noqa: S603 - fixed argv of an installed tool
        [coturn_binary(), "--version"], capture_output=True, text=True, check=False
    )
    try:
        ours = metadata.version("secureconnect")
    except metadata.PackageNotFoundError:
        ours = "unknown"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "coturn": (version.stdout.strip() or version.stderr.strip()).splitlines()[0],
        "secureconnect": ours,
        "loadavg_start": os.getloadavg()[0],
    }


def markdown(b: Bench, info: dict[str, Any], argv: list[str], total: float) -> str:
    lines = [
        "# SecureConnect vs coturn",
        "",
        f"Command: `{' '.join(argv)}`, total runtime {total:.0f} s, {b.rounds} relay round(s), "
        "every section alternating which server goes first.",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} CPUs, kernel {info['kernel']}, "
        f"load average {info['loadavg_start']:.2f} at start, {info['loadavg_end']:.2f} at the end. "
        f"Versions: coturn {info['coturn']}, "
        f"Python {info['python']}, secureconnect {info['secureconnect']}.",
        "",
        "| section | metric | ours | coturn | ours/coturn | unit | notes |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in b.rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            f"| {r.section} | {r.metric} | {fmt(r.ours)} | {fmt(r.coturn)} | {ratio} | "
            f"{r.unit} | {r.note} |"
        )
    lines += ["", "Section runtimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in b.timings.items())]
    if b.failures:
        lines += ["", "Failures:", *(f"- {f}" for f in b.failures)]
    lines += ["", "Commands:", ""]
    for name, commands in b.commands.items():
        lines += [f"- {name}:", *(f"  - `{c}`" for c in commands)]
    lines += [
        "",
        "CPU s per million relayed datagrams is the server's utime+stime over the uclient run "
        "divided by relayed datagrams (2 per round trip), i.e. µs per datagram. uclient runs "
        "with `-z 0` (unpaced) so throughput figures are only meaningful when the server is the "
        "bottleneck; see bench/README.md. The relay notes give the cores that *other* processes "
        "kept busy during the runs (turn_relay.py's `oth`): above ~0.3 the figures are noisy.",
    ]
    return "\n".join(lines) + "\n"


SECTIONS = ("stun", "alloc", "relay", "latency", "signal", "capacity", "capacity-best")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections, from {','.join(SECTIONS)}"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds for relay (1-5)")
    parser.add_argument("--stun-rounds", type=int, default=3, help="STUN rounds (1-10)")
    parser.add_argument("--stun-duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--alloc-stages", default="1000,5000")
    parser.add_argument("--relay-sizes", default="100,1000")
    parser.add_argument("--latency-count", type=int, default=6000)
    parser.add_argument("--latency-rate", type=float, default=500.0)
    parser.add_argument("--signal-connections", default="1000,5000")
    parser.add_argument("--signal-round-trips", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--coturn",
        type=Path,
        help="the coturn turnserver to compare with (default: the one on PATH; e.g. 4.17.1 from "
        "../shared/tools/build-coturn-4.17.sh, see bench/README.md)",
    )
    args = parser.parse_args(argv)
    if args.coturn:
        os.environ[COTURN_ENV] = str(args.coturn.resolve())  # the launchers and subprocesses
    args.sections = [s for s in args.only.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    args.rounds = max(1, min(args.rounds, 5))
    args.stun_rounds = max(1, min(args.stun_rounds, 10))
    args.stun_duration = max(1.0, min(args.stun_duration, 20.0))
    args.latency_count = max(10, min(args.latency_count, 20_000))
    args.latency_rate = max(10.0, min(args.latency_rate, 5000.0))
    return args


def ints(text: str, low: int, high: int) -> list[int]:
    return sorted({max(low, min(int(x), high)) for x in text.split(",") if x})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    raise_fd_limit(16_384)  # 5,000 client sockets plus the servers' relay sockets
    info = machine_info()

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"bench: {info['cpu']}, {info['cpus']} CPUs, coturn {info['coturn']}")
    with tempfile.TemporaryDirectory(prefix="sc-bench-") as tmp:
        b = Bench(Path(tmp), args.rounds, log)
        plan: dict[str, Callable[[], None]] = {
            "stun": lambda: stun_section(b, args.stun_duration, args.stun_rounds),
            "alloc": lambda: alloc_section(b, ints(args.alloc_stages, 1, 10_000), 120.0),
            "relay": lambda: relay_section(b, ints(args.relay_sizes, 16, 1400), RELAY_LOADS),
            "latency": lambda: latency_section(b, args.latency_count, args.latency_rate),
            "signal": lambda: signal_section(
                b, ints(args.signal_connections, 1, 5000), args.signal_round_trips
            ),
            "capacity": lambda: capacity_section(b),
            "capacity-best": lambda: best_mode_section(b),
        }
        for name in args.sections:
            log(f"== {name}")
            t0 = time.monotonic()
            try:
                plan[name]()
            except (RuntimeError, OSError, subprocess.SubprocessError, TimeoutError) as exc:
                b.failures.append(f"{name}: {exc}")
                log(f"{name} FAILED: {exc}")
            b.timings[name] = time.monotonic() - t0
    total = time.monotonic() - began
    shown = ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    args.out.mkdir(parents=True, exist_ok=True)
    info["loadavg_end"] = os.getloadavg()[0]
    (args.out / "latest.md").write_text(markdown(b, info, shown, total))
    document = {
        "machine": info,
        "command": shown,
        "total_s": total,
        "timings_s": b.timings,
        "rows": [{**asdict(r), "ratio": r.ratio} for r in b.rows],
        "commands": b.commands,
        "failures": b.failures,
        "raw": b.raw,
    }
    (args.out / "latest.json").write_text(json.dumps(document, indent=1) + "\n")
    log(f"wrote {args.out / 'latest.md'} and latest.json in {total:.0f} s")
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
