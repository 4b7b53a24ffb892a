"""Paced ChannelData load from several processes: the capacity benchmark's own generator.

``turnutils_uclient`` cannot be asked for a rate: at ``-z 0`` each flow waits for its echoes, so
it measured its own round-trip latency (0.16-0.20 of a core, "client-bound") rather than either
server's ceiling. This generator offers a fixed rate instead and counts what comes back.

``FLOWS`` allocations (each with channel 0x4000 bound to the UDP echo peer, through
:class:`turn_client.ChannelClient`, so the same code speaks to coturn and to us; each from a
loopback address of its own, 127.0.0.2 upwards, so our TURN workers share them) are spread
over ``PROCS`` worker processes. All workers allocate first, then start together at a shared wall
time and send ``SIZE``-byte ChannelData datagrams at ``RATE / PROCS`` round trips per second each,
in 1 ms slices, reading echoes between slices without blocking; after ``DURATION`` seconds they
keep reading for one more second. One datagram in 32 carries its send time, so the echoes give
round-trip samples (p50/p99). The parent prints one JSON line: offered, sent and received
round trips, loss, the achieved send rate, the round trips, and each worker's CPU, so a
saturated generator shows itself (``sent`` below ``offered``, workers near a full core) instead
of passing for the server.

Bounded: at most 500,000 round trips per second offered, 30 s, 16 processes, 64 flows.

    python bench/blast.py --port 3478 --secret S --peer-port 9000 --rate 20000 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from turn_client import CHANNEL, CHANNEL_HEADER, ChannelClient

MAX_RATE = 500_000
MAX_DURATION = 30.0
MAX_PROCS = 16
MAX_FLOWS = 64
SLICE = 0.001  # seconds between send bursts
STAMP_EVERY = 32  # one datagram in this many carries its send time: the round-trip samples
STAMPED = b"\x01"  # the payload's first byte in a timestamped datagram (zero otherwise)
STAMP = struct.Struct("!d")
DRAIN = 1.0  # seconds of reading after the last send


def drain(recvs: Sequence[Callable[[int], bytes]], rtts: list[float] | None = None) -> int:
    """Read every datagram waiting on the sockets (non-blocking); how many there were. A
    timestamped one (every :data:`STAMP_EVERY`-th sent) adds its round trip to ``rtts``."""
    count = 0
    for recv in recvs:
        while True:
            try:
                data = recv(2048)
            except OSError:  # BlockingIOError: empty; anything else: nothing more to read
                break
            count += 1
            if rtts is not None and data[4:5] == STAMPED:
                rtts.append(time.perf_counter() - STAMP.unpack_from(data, 5)[0])
    return count


def source_address(flow: int) -> str:
    """Flow ``flow``'s own loopback source address: 127.0.0.2, .3, ... (our TURN workers map
    clients by address, docs/workers.md; coturn spreads them by port either way)."""
    return f"127.0.0.{2 + flow}"


def worker(args: argparse.Namespace) -> dict[str, float]:
    """One process: ``args.flows`` allocations, paced sends, echo counting."""
    clients = [
        ChannelClient(("127.0.0.1", args.port), args.secret, source=source_address(flow))
        for flow in range(args.first_flow, args.first_flow + args.flows)
    ]
    try:
        for flow, client in enumerate(clients, start=args.first_flow):
            peer = args.peer_ports[flow % len(args.peer_ports)]
            client.allocate_and_bind(("127.0.0.1", peer))
        socks = [c.sock for c in clients]
        for sock in socks:
            sock.setblocking(False)
        header = CHANNEL_HEADER.pack(CHANNEL, args.size)
        payload = header + bytes(args.size)
        pad = bytes(args.size - 1 - STAMP.size)
        rtts: list[float] = []
        sends = [s.send for s in socks]
        recvs = [s.recv for s in socks]
        rate = args.rate / args.procs
        cpu0 = time.process_time()
        while time.time() < args.start_at:
            time.sleep(min(0.01, max(0.0, args.start_at - time.time())))
        start = time.perf_counter()
        stop = start + args.duration
        sent = received = errors = 0
        n = len(sends)
        while (now := time.perf_counter()) < stop:
            due = int((now - start) * rate) - sent
            for _ in range(min(due, 10_000)):
                data = payload
                if sent % STAMP_EVERY == 0:
                    data = header + STAMPED + STAMP.pack(time.perf_counter()) + pad
                try:
                    sends[sent % n](data)
                except OSError:  # ENOBUFS or a queued ICMP error: the datagram is lost
                    errors += 1
                sent += 1
            received += drain(recvs, rtts)
            remaining = SLICE - (time.perf_counter() - now)
            if remaining > 0:
                select.select(socks, [], [], remaining)
        end = time.perf_counter() + DRAIN
        while (now := time.perf_counter()) < end and received < sent:
            ready, _, _ = select.select(socks, [], [], end - now)
            received += drain([sock.recv for sock in ready], rtts)
        return {
            "rtts_ms": [round(1000 * rtt, 4) for rtt in rtts],
            "sent": sent,
            "received": received,
            "send_errors": errors,
            "cpu_s": time.process_time() - cpu0,
            "send_s": args.duration,
        }
    finally:
        for client in clients:
            client.release()  # the next step may bind the same source port
            client.close()


def spread(total: int, parts: int) -> list[int]:
    """``total`` flows over ``parts`` workers, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument(
        "--peer-port",
        required=True,
        help="the echo peer's port, or a comma-separated list: flow i uses port i mod n",
    )
    parser.add_argument("--rate", type=float, required=True, help="round trips per second")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--flows", type=int, default=1)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--first-flow", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.peer_ports = [int(port) for port in str(args.peer_port).split(",") if port]
    args.rate = max(1.0, min(args.rate, MAX_RATE))
    args.duration = max(0.5, min(args.duration, MAX_DURATION))
    args.size = max(16 + STAMP.size, min(args.size, 1400))
    args.flows = max(1, min(args.flows, MAX_FLOWS))
    args.procs = max(1, min(args.procs, MAX_PROCS, args.flows))
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    start_at = time.time() + 1.0 + 0.05 * args.flows  # time for every worker to allocate
    shares = spread(args.flows, args.procs)
    firsts = [sum(shares[:i]) for i in range(len(shares))]
    workers = [
        subprocess.Popen(  # noqa: S603 - this script with numeric arguments
            [
                sys.executable,
                __file__,
                "--worker",
                f"--port={args.port}",
                f"--secret={args.secret}",
                f"--peer-port={args.peer_port}",
                f"--rate={args.rate}",
                f"--duration={args.duration}",
                f"--size={args.size}",
                f"--flows={flows}",
                f"--procs={args.procs}",
                f"--start-at={start_at}",
                f"--first-flow={first}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for first, flows in zip(firsts, shares, strict=True)
    ]
    results = []
    for proc in workers:
        out, _ = proc.communicate(timeout=args.duration + 30)
        if proc.returncode != 0:
            print(f"blast: a worker exited {proc.returncode}", file=sys.stderr)
            return 1
        results.append(json.loads(out.strip().splitlines()[-1]))
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    offered = int(args.rate * args.duration)
    rtts = sorted(rtt for r in results for rtt in r["rtts_ms"])
    cuts = statistics.quantiles(rtts, n=100, method="inclusive") if len(rtts) >= 2 else [0.0] * 99
    print(
        json.dumps(
            {
                "rate": args.rate,
                "offered": offered,
                "sent": sent,
                "received": received,
                "loss_pct": 100.0 * (sent - received) / sent if sent else 100.0,
                "sent_share": sent / offered if offered else 0.0,
                "relayed_per_s": 2 * received / args.duration,
                "rtt_p50_ms": cuts[49],
                "rtt_p99_ms": cuts[98],
                "rtt_samples": len(rtts),
                "send_errors": sum(r["send_errors"] for r in results),
                "worker_cores": [r["cpu_s"] / r["send_s"] for r in results],
                "procs": args.procs,
                "flows": args.flows,
                "pid": os.getpid(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
