"""STUN Binding load generator: runs in its own process, prints one JSON line.

``turnutils_stunclient`` sends one request and exits, so it cannot load a server. This sends
pre-built RFC 8489 Binding requests (cookie, random transaction ids, no attributes) over
``--sockets`` connected UDP sockets, keeping up to ``--window`` requests outstanding per socket:
each answer lets the next request go (a closed loop, so the rate adapts to whichever side is
slower). A socket that got no answer for 0.2 s is assumed to have lost its outstanding requests
and is refilled. Run the same generator against both servers; with ``--pid`` it also reports the
server's CPU seconds over the run (utime+stime from /proc), so the caller gets answers per server
CPU second, and its own CPU seconds, to tell when the generator rather than the server was the
limit.

Bounded: ``--duration`` at most 60 s, at most 256 sockets and 1024 outstanding per socket.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

from common import process_cpu

STALL = 0.2  # seconds without an answer after which a socket's outstanding requests are lost


def binding_requests(count: int) -> list[bytes]:
    """``count`` Binding requests with random transaction ids."""
    return [b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12) for _ in range(count)]


def run(host: str, port: int, sockets: int, window: int, duration: float) -> dict[str, float]:
    """Drive the closed loop for ``duration`` seconds; counts of requests sent and answered."""
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((host, port))
        sock.setblocking(False)
        socks.append(sock)
    requests = binding_requests(64)
    outstanding = [0] * sockets
    last_answer = [time.monotonic()] * sockets
    sent = received = stalls = 0
    cpu0 = os.times()
    start = time.monotonic()
    end = start + duration
    k = 0
    try:
        while (now := time.monotonic()) < end:
            for i, sock in enumerate(socks):
                got = 0
                try:
                    while got < window:
                        sock.recv(2048)
                        got += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
                if got:
                    received += got
                    outstanding[i] = max(0, outstanding[i] - got)
                    last_answer[i] = now
                elif outstanding[i] and now - last_answer[i] > STALL:
                    outstanding[i] = 0
                    last_answer[i] = now
                    stalls += 1
                try:
                    while outstanding[i] < window:
                        sock.send(requests[k & 63])
                        k += 1
                        outstanding[i] += 1
                        sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
        elapsed = time.monotonic() - start
    finally:
        for sock in socks:
            sock.close()
    cpu1 = os.times()
    return {
        "sent": sent,
        "received": received,
        "stalls": stalls,
        "in_flight": sum(outstanding),  # sent but not yet answered when the run ended
        "seconds": elapsed,
        "generator_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sockets", type=int, default=8)
    parser.add_argument("--window", type=int, default=32, help="outstanding per socket")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--pid", type=int, help="the server's pid, to report its CPU seconds")
    args = parser.parse_args()
    sockets = max(1, min(args.sockets, 256))
    window = max(1, min(args.window, 1024))
    duration = max(0.5, min(args.duration, 60.0))
    cpu0 = process_cpu(args.pid) if args.pid else 0.0
    result = run(args.host, args.port, sockets, window, duration)
    if args.pid:
        result["server_cpu_s"] = process_cpu(args.pid) - cpu0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
