"""Signaling across nodes on Redis (issue #15): the routed round trip on one node and across
two nodes, and the memory of an idle connection with the Redis backplane and in memory.

Three appliances (``secureconnect run signal``, plain ``ws://`` so TLS costs stay out of the
comparison) run on loopback: nodes 1 and 2 (127.0.0.1, 127.0.0.2) share a ``redis-server``
started here (``signal.backplane``); node 3 (127.0.0.3) keeps rooms in memory, the default.
Each gets ``--connections`` idle joined WebSockets (rooms of ``--room-size``); the resident set of
each node process is read before and after (``VmRSS``), per connection. Then, with those
connections open, ``--round-trips`` sequential ``signal`` round trips A -> B -> A:

* same node, Redis: A and B on node 1 (every message still goes through Redis);
* cross node: A on node 1, B on node 2;
* same node, in memory: A and B on node 3 (the single-process reference).

The three rows alternate over ``--rounds`` so that drift on the machine spreads over all;
reported are the medians over rounds of p50 and p99. The issue's target: cross-node p99 at most
3 ms on loopback. Everything is bounded: counts are capped, every wait has a timeout.

    .venv/bin/python bench/cluster_signal.py [--connections 1000] [--round-trips 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import common  # noqa: F401 - before `appliance`: it puts tests/support on sys.path
from appliance import free_port, run_appliance
from common import percentiles, raise_fd_limit
from redis_server import RedisServer
from signal_measure import (
    MAX_CONNECTIONS,
    STEP_TIMEOUT,
    Server,
    close_all,
    dial,
    join,
    open_idle,
    recv,
    settled,
)

MAX_ROUND_TRIPS = 20_000
RESULTS = Path(__file__).with_name("results")


@contextmanager
def node(workdir: Path, index: int, backplane: str) -> Iterator[Server]:
    port = free_port(socket.SOCK_STREAM)
    ip = f"127.0.0.{index}"
    settings = [
        f'signal.listen=["{ip}"]',
        f"signal.port={port}",
        "signal.tls=false",
        f"signal.max_connections_per_ip={MAX_CONNECTIONS + 100}",
        f"signal.max_connections={MAX_CONNECTIONS * 2}",
        "signal.max_pending_handshakes_per_ip=1000",  # the benchmark's 50 handshakes at once
        "signal.rate_limit=1000000",
        "signal.max_room_size=1000",
        "turn.enabled=false",
        "general.drain_timeout=1",
    ]
    if backplane:
        settings += [f"signal.backplane={backplane}", f"signal.node_name=bench{index}"]
    workdir.mkdir(parents=True, exist_ok=True)
    with run_appliance(
        workdir,
        "signal",
        state_dir=workdir / "state",
        extra_args=("--log-level", "warning"),
        settings=settings,
        log_file=workdir / "stderr.log",
        ready_timeout=30,
        stop_timeout=15,
    ) as running:
        yield Server(running.proc, f"ws://{ip}:{port}/ws", None)


async def round_trips(a_server: Server, b_server: Server, count: int) -> dict[str, Any]:
    """A (on ``a_server``) -> B (on ``b_server``) -> A, ``count`` times after a warm-up."""
    warmup = 200
    a, b = await dial(a_server), await dial(b_server)
    try:
        room = f"rtt-{time.monotonic_ns()}"
        a_id = await join(a, room)
        await join(b, room)
        b_id = str((await recv(a))["peer"])  # peer-joined

        async def echo() -> None:
            for _ in range(warmup + count):
                message = await recv(b)
                await b.send(json.dumps({"type": "signal", "to": a_id, "data": message["data"]}))

        echoing = asyncio.create_task(echo())
        rtts: list[float] = []
        for n in range(warmup + count):
            start = time.perf_counter()
            await a.send(json.dumps({"type": "signal", "to": b_id, "data": n}))
            reply = await recv(a)
            if reply["data"] != n:
                raise RuntimeError(f"out of order: {reply}")
            rtts.append(time.perf_counter() - start)
        await asyncio.wait_for(echoing, STEP_TIMEOUT)
    finally:
        await close_all([a, b])
    return percentiles([x * 1000.0 for x in rtts[warmup:]])


def rss_kib(server: Server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def measure(nodes: dict[str, Server], args: argparse.Namespace) -> dict[str, Any]:
    one, two, memory = nodes["redis-1"], nodes["redis-2"], nodes["memory"]
    for server in nodes.values():  # warm-up: code paths, scripts, pools
        await close_all(await open_idle(server, 20, args.room_size))
        await settled(server, 0)
    before = {name: rss_kib(server) for name, server in nodes.items()}
    idle: dict[str, list[Any]] = {}
    for name, server in nodes.items():
        idle[name] = await open_idle(server, args.connections, args.room_size)
    try:
        for server in nodes.values():
            await settled(server, args.connections)
        await asyncio.sleep(1.0)
        after = {name: rss_kib(server) for name, server in nodes.items()}
        rows: dict[str, list[dict[str, float]]] = {"same-node redis": [], "cross-node": []}
        rows["same-node memory"] = []
        pairs = {
            "same-node redis": (one, one),
            "cross-node": (one, two),
            "same-node memory": (memory, memory),
        }
        for round_index in range(args.rounds):
            order = list(pairs) if round_index % 2 == 0 else list(reversed(pairs))
            for row in order:
                rows[row].append(await round_trips(*pairs[row], args.round_trips))
    finally:
        for sockets in idle.values():
            await close_all(sockets)
    memory_rows = {
        name: round((after[name] - before[name]) / args.connections, 1) for name in nodes
    }
    return {"rtt_ms": rows, "kib_per_idle_connection": memory_rows, "rss_kib": after}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    table = {}
    for row, runs in result["rtt_ms"].items():
        table[row] = {
            key: round(statistics.median(run[key] for run in runs), 3) for key in ("p50", "p99")
        }
    return table


def markdown(result: dict[str, Any], table: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Signaling across nodes on Redis",
        "",
        f"`{' '.join(sys.argv)}`: {args.connections} idle joined connections per node (rooms "
        f"of {args.room_size}), {args.round_trips} round trips per row and round, "
        f"{args.rounds} rounds, medians over rounds. Loopback, plain ws://.",
        "",
        "| row | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    lines += [f"| {row} | {v['p50']:.3f} | {v['p99']:.3f} |" for row, v in table.items()]
    lines += ["", "| node | KiB per idle connection |", "|---|---:|"]
    for name, kib in result["kib_per_idle_connection"].items():
        lines.append(f"| {name} | {kib} |")
    cross = table["cross-node"]["p99"]
    lines += ["", f"Target: cross-node p99 <= 3 ms: {'met' if cross <= 3 else 'missed'} ({cross})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--room-size", type=int, default=2)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster-latest.md")
    args = parser.parse_args()
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be 1 to {MAX_CONNECTIONS}")
    if not 1 <= args.round_trips <= MAX_ROUND_TRIPS or not 1 <= args.rounds <= 10:
        parser.error(f"--round-trips 1 to {MAX_ROUND_TRIPS}, --rounds 1 to 10")
    raise_fd_limit(3 * args.connections + 1000)
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as scratch, ExitStack() as stack:
        work = Path(scratch)
        redis = RedisServer(work)
        redis.start()
        stack.callback(redis.stop)
        nodes = {
            "redis-1": stack.enter_context(node(work / "n1", 1, redis.url)),
            "redis-2": stack.enter_context(node(work / "n2", 2, redis.url)),
            "memory": stack.enter_context(node(work / "n3", 3, "")),
        }

        async def bounded() -> dict[str, Any]:
            async with asyncio.timeout(600):
                return await measure(nodes, args)

        result = asyncio.run(bounded())
    table = summary(result)
    text = markdown(result, table, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({**result, "summary": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
