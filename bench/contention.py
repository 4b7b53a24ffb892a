"""Signaling latency while the TURN relay is saturated, in one all-in-one process (issue #13).

Why: in ``secureconnect run`` (TURN and signaling in one process) the UDP data plane runs in its
own thread and shares the TURN lock - and the interpreter's GIL - with trio's thread, which also
serves signaling. The signaling benchmark measures only an idle relay; this measures the routed
``signal`` round trip (A -> B -> A, ``signal_measure.latency``) on the same process twice: with
the relay idle, and while ``bench/blast.py`` offers ChannelData at ``--rate`` round trips per
second through ``--flows`` allocations to a UDP echo peer (``turnutils_peer``). The target
(issue #13): p99 under saturation at most twice the idle p99.

The control: a second process serving signaling only (same code, no relay in it) is measured in
the same way, alternating with the first under the same load. On a 2-core machine the load
generator, the echo peer and the relay fill both cores, so every process's latency grows; the
all-in-one's p99 ratio over the control's (``in_process_p99_factor``) is what the relay costs
signaling *inside its process* (the lock and the GIL), beyond what the busy machine costs anyone.

Everything on loopback; the load is bounded by ``blast.py``'s own limits (rate, 30 s).

    .venv/bin/python bench/contention.py [--rate 40000] [--flows 8] [--round-trips 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common  # noqa: F401 - before `appliance`: it puts tests/support on sys.path
from appliance import free_port, run_appliance
from servers import udp_echo_peer
from signal_measure import Server, latency

SECRET = "contention-secret"  # noqa: S105 - a loopback benchmark's own TURN secret
BLAST = Path(__file__).with_name("blast.py")


def blast(port: int, peer_port: int, rate: float, flows: int, duration: float) -> Any:
    """Start the paced relay load (it waits a second for its allocations, then sends)."""
    return subprocess.Popen(  # noqa: S603 - our own script, numeric arguments
        [
            sys.executable,
            str(BLAST),
            f"--port={port}",
            f"--secret={SECRET}",
            f"--peer-port={peer_port}",
            f"--rate={rate}",
            f"--flows={flows}",
            f"--procs={min(flows, 2)}",
            f"--duration={duration}",
            "--size=100",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=40_000.0, help="relay round trips per s")
    parser.add_argument("--flows", type=int, default=8)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trips = max(100, min(args.round_trips, 20_000))
    turn, wss, control_wss = (
        free_port(),
        free_port(socket.SOCK_STREAM),
        free_port(socket.SOCK_STREAM),
    )
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        workdir = Path(tmp)
        settings = (
            f"turn.port={turn}",
            f"stun.port={turn}",
            "turn.tls=false",
            "stun.tls=false",
            f"turn.secrets=[{json.dumps(SECRET)}]",
            "turn.rfc5766_channels=true",
            "turn.bandwidth_limit=0",
            "turn.total_quota=1000",
            f"signal.port={wss}",
            "signal.rate_limit=1000000",
            "general.drain_timeout=1",
        )
        control_settings = (
            f"signal.port={control_wss}",
            "signal.rate_limit=1000000",
            "general.drain_timeout=1",
        )
        with (
            udp_echo_peer() as peer_port,
            run_appliance(
                workdir,
                state_dir=workdir / "state",
                settings=settings,
                extra_args=("--log-level", "warning"),
                ready_timeout=30,
            ) as app,
            run_appliance(
                workdir,
                "signal",
                state_dir=workdir / "state",
                settings=control_settings,
                extra_args=("--log-level", "warning"),
                ready_timeout=30,
            ) as control_app,
        ):
            context = ssl.create_default_context(
                cafile=str(workdir / "state" / "selfsigned-cert.pem")
            )
            server = Server(app.proc, f"wss://127.0.0.1:{wss}/ws", context)
            control = Server(control_app.proc, f"wss://127.0.0.1:{control_wss}/ws", context)
            idle = asyncio.run(latency(server, trips))
            control_idle = asyncio.run(latency(control, trips))
            duration = 30.0
            load = blast(turn, peer_port, args.rate, args.flows, duration)
            try:
                asyncio.run(asyncio.sleep(1.5 + 0.05 * args.flows))  # allocations, then sending
                # Half the round trips each, alternating, so both see the same load.
                half = max(100, trips // 2)
                loaded, control_loaded = [], []
                for _ in range(2):
                    loaded.append(asyncio.run(latency(server, half)))
                    control_loaded.append(asyncio.run(latency(control, half)))
            finally:
                out, _ = load.communicate(timeout=duration + 40)
            relay = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    result: dict[str, Any] = {
        "all_in_one": summary(idle, loaded),
        "signal_only_control": summary(control_idle, control_loaded),
        "relay": {
            key: relay.get(key) for key in ("rate", "sent", "received", "loss_pct", "relayed_per_s")
        },
    }
    ours, control_ratio = (
        result["all_in_one"]["p99_ratio"],
        result["signal_only_control"]["p99_ratio"],
    )
    # What the relay costs signaling in its own process, beyond what the busy machine costs any
    # process (the control: the same signaling code, no relay in its process).
    result["in_process_p99_factor"] = (
        round(ours / control_ratio, 2) if ours and control_ratio else None
    )
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def summary(idle: dict[str, Any], loaded: list[dict[str, Any]]) -> dict[str, Any]:
    """Idle and saturated round-trip percentiles (the saturated ones over both halves: the
    median of p50s, the worse p99) and p99 saturated/idle."""
    idle_ms = idle["round_trip_ms"]
    busy = {
        "p50": statistics.median(run["round_trip_ms"]["p50"] for run in loaded),
        "p99": max(run["round_trip_ms"]["p99"] for run in loaded),
    }
    return {
        "idle_round_trip_ms": {"p50": idle_ms["p50"], "p99": idle_ms["p99"]},
        "saturated_round_trip_ms": busy,
        "p99_ratio": round(busy["p99"] / idle_ms["p99"], 2) if idle_ms["p99"] else None,
    }


if __name__ == "__main__":
    sys.exit(main())
