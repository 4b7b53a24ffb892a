"""Signaling measurements: memory per idle WSS connection, latency of a routed ``signal``.

(a) Memory: the appliance (``python -m secureconnect run signal``, WSS with its self-signed
certificate) runs as a subprocess; its resident set (``VmRSS`` in ``/proc/PID/status``) is read
after a warm-up, then after ``--connections`` WebSocket connections have joined rooms of
``--room-size`` peers and sit idle, then after they are closed again. The difference divided by
the number of connections is the server's cost of one idle, joined WSS connection (TLS state,
WebSocket protocol objects, the trio tasks and outbox of ``SignalServer``, the hub's session).
``signal.max_connections_per_ip`` is raised (the default cap is 64 per client address) and so is
the open-file limit (``RLIMIT_NOFILE``, inherited by the server).

(b) Latency: two peers in one room; A sends ``signal`` to B, B sends it straight back, A waits:
``--round-trips`` sequential round trips after a warm-up, with the real ``websockets`` asyncio
client. Reported: p50/p99/max of the round trip and of the one-way time B measured
(``time.perf_counter`` stamped by A, read by B: same machine, same clock), once on an otherwise
empty server and once while the idle connections of (a) are open. ``signal.rate_limit`` is raised
for this (the default, 50 messages/s per connection, would rate-limit a benchmark).

Everything runs on loopback; counts are capped and every wait has a timeout. Usage::

    python bench/signal_measure.py [--connections 1000] [--round-trips 2000] [--plain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # noqa: F401 - before `appliance`: it puts tests/support on sys.path
from appliance import free_port, run_appliance
from common import percentiles, raise_fd_limit
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

MAX_CONNECTIONS = 5000
MAX_ROUND_TRIPS = 20_000
OPEN_CONCURRENCY = 50  # handshakes in flight at once
STEP_TIMEOUT = 10.0  # seconds for any one handshake, message or settle
RUN_TIMEOUT = 300.0  # seconds for the whole measurement


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    ssl: ssl.SSLContext | None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@contextmanager
def appliance(workdir: Path, *, tls: bool) -> Iterator[Server]:
    port = free_port(socket.SOCK_STREAM)
    state = workdir / "state"
    with run_appliance(
        workdir,
        "signal",
        state_dir=state,
        extra_args=("--log-level", "warning"),
        settings=(
            f"signal.port={port}",
            f"signal.tls={str(tls).lower()}",
            f"signal.max_connections_per_ip={MAX_CONNECTIONS + 100}",
            "signal.rate_limit=1000000",
            "signal.max_room_size=1000",
            "general.drain_timeout=1",
        ),
        ready_timeout=30,
        stop_timeout=15,
    ) as running:
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(state / "selfsigned-cert.pem"))
        yield Server(running.proc, f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/ws", context)


async def dial(server: Server) -> ClientConnection:
    return await ws_connect(
        server.url,
        ssl=server.ssl,
        proxy=None,
        compression=None,
        open_timeout=STEP_TIMEOUT,
        ping_interval=None,  # idle means idle: the server's own pings still run
    )


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(STEP_TIMEOUT):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def join(ws: ClientConnection, room: str) -> str:
    await ws.send(json.dumps({"type": "join", "room": room}))
    while (message := await recv(ws))["type"] != "welcome":
        pass
    return str(message["peer"])


async def open_idle(server: Server, count: int, room_size: int) -> list[ClientConnection]:
    """``count`` joined connections, ``room_size`` to a room (at most OPEN_CONCURRENCY at once)."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(n: int) -> ClientConnection:
        async with gate:
            ws = await dial(server)
            await join(ws, f"idle-{n // room_size}")
            return ws

    opened = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    sockets = [ws for ws in opened if isinstance(ws, ClientConnection)]
    failures = [exc for exc in opened if isinstance(exc, BaseException)]
    if failures:
        await close_all(sockets)
        raise RuntimeError(f"{len(failures)} connections failed, e.g. {failures[0]!r}")
    return sockets


async def close_all(sockets: list[ClientConnection]) -> None:
    gate = asyncio.Semaphore(OPEN_CONCURRENCY * 4)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets), return_exceptions=True)


def server_connections(server: Server) -> int:
    """The hub's ``signal_connections`` gauge, from /metrics."""
    parts = urllib.parse.urlsplit(server.url)
    scheme = "https" if server.ssl else "http"
    url = f"{scheme}://{parts.netloc}/metrics"
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # loopback only, whatever *_PROXY says
        urllib.request.HTTPSHandler(context=server.ssl),
    )
    with opener.open(url, timeout=STEP_TIMEOUT) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("signal_connections "):
                return int(float(line.split()[1]))
    raise RuntimeError("no signal_connections in /metrics")


async def settled(server: Server, expected: int) -> None:
    """Wait until the server counts ``expected`` connections (its handlers ran)."""
    async with asyncio.timeout(STEP_TIMEOUT * 3):
        while await asyncio.to_thread(server_connections, server) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the count lives in another process: poll it


async def latency(server: Server, round_trips: int, warmup: int = 200) -> dict[str, Any]:
    """A -> B -> A ``signal`` round trips; (round trip, one-way A->B) percentiles in ms."""
    a, b = await dial(server), await dial(server)
    try:
        room = f"latency-{time.monotonic_ns()}"
        a_id = await join(a, room)
        b_id = await join(b, room)
        await recv(a)  # peer-joined
        one_way: list[float] = []

        async def echo() -> None:
            for _ in range(warmup + round_trips):
                message = await recv(b)
                one_way.append(time.perf_counter() - message["data"]["t"])
                await b.send(json.dumps({"type": "signal", "to": a_id, "data": message["data"]}))

        echoing = asyncio.create_task(echo())
        rtts: list[float] = []
        for n in range(warmup + round_trips):
            start = time.perf_counter()
            frame = {"type": "signal", "to": b_id, "data": {"n": n, "t": start}}
            await a.send(json.dumps(frame))
            reply = await recv(a)
            if reply["data"]["n"] != n:
                raise RuntimeError(f"out of order: {reply}")
            rtts.append(time.perf_counter() - start)
        await asyncio.wait_for(echoing, STEP_TIMEOUT)
    finally:
        await close_all([a, b])
    ms = 1000.0
    return {
        "round_trip_ms": percentiles([x * ms for x in rtts[warmup:]]),
        "one_way_ms": percentiles([x * ms for x in one_way[warmup:]]),
    }


async def measure(server: Server, connections: int, room_size: int, trips: int) -> dict[str, Any]:
    await close_all(await open_idle(server, 20, room_size))  # warm-up: code paths, TLS caches
    empty = await latency(server, trips)
    await settled(server, 0)
    before = server.rss_kib()
    started = time.monotonic()
    sockets = await open_idle(server, connections, room_size)
    opened_in = time.monotonic() - started
    try:
        await settled(server, connections)
        await asyncio.sleep(1.0)  # let allocator and kernel accounting settle
        after = server.rss_kib()
        loaded = await latency(server, trips)
    finally:
        await close_all(sockets)
    await settled(server, 0)
    closed = server.rss_kib()
    return {
        "connections": connections,
        "room_size": room_size,
        "open_seconds": round(opened_in, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": closed,
        "kib_per_connection": round((after - before) / connections, 1),
        "latency_empty_server": empty,
        "latency_with_idle_connections": loaded,
    }


def report(label: str, result: dict[str, Any]) -> None:
    print(f"== {label}")
    print(
        f"memory: {result['connections']} idle joined connections (rooms of "
        f"{result['room_size']}), opened in {result['open_seconds']} s; server VmRSS "
        f"{result['rss_before_kib']} KiB -> {result['rss_after_kib']} KiB "
        f"(after closing: {result['rss_after_close_kib']} KiB) = "
        f"{result['kib_per_connection']} KiB per connection"
    )
    for name in ("latency_empty_server", "latency_with_idle_connections"):
        rtt, one = result[name]["round_trip_ms"], result[name]["one_way_ms"]
        print(
            f"{name}: {rtt['n']} round trips; round trip p50 {rtt['p50']:.3f} ms, "
            f"p99 {rtt['p99']:.3f} ms, max {rtt['max']:.3f} ms; one way A->B p50 "
            f"{one['p50']:.3f} ms, p99 {one['p99']:.3f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--room-size", type=int, default=2)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--plain", action="store_true", help="also measure plain ws://")
    parser.add_argument("--json", action="store_true", help="print JSON results too")
    args = parser.parse_args()
    connections = max(1, min(args.connections, MAX_CONNECTIONS))
    trips = max(10, min(args.round_trips, MAX_ROUND_TRIPS))
    room_size = max(1, min(args.room_size, 1000))
    raise_fd_limit(2 * connections + 256)
    results: dict[str, Any] = {}
    for tls in (True, False) if args.plain else (True,):
        label = "wss" if tls else "ws"
        with tempfile.TemporaryDirectory() as tmp, appliance(Path(tmp), tls=tls) as server:
            coro = measure(server, connections, room_size, trips)
            results[label] = asyncio.run(asyncio.wait_for(coro, RUN_TIMEOUT))
        report(label, results[label])
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
